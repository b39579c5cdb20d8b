"""How the template learns the adding problem: sequence length x clipping x cell.

    python benchmarks/adding.py [--lengths 50 100 200] [--max-steps 2000] [--cells lstm gru] [--clipping on off]

Each run is configs/adding.yaml's setup (2 x 64, Adam 3e-3, batch 64, seed 0) for
at most --max-steps optimiser steps, validating every 50 steps on 1,000 held-out
sequences. Prints the best validation MSE and the first step at which it went
below 0.01 ("learned"); the constant forecast 1 scores 0.167.
"""

import argparse
import math
import time

import lightning as L
import torch
from common import begin
from lightning.pytorch.callbacks import EarlyStopping

from forecasting.data.adding import AddingDataModule
from forecasting.models.forecaster import Forecaster


class History(L.Callback):
    def __init__(self):
        self.points = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.points.append((trainer.global_step, float(trainer.callback_metrics["val/loss"])))


def run(seq_len: int, clip: float | None, cell: str, max_steps: int) -> tuple[float, int | None, float, str]:
    L.seed_everything(0, verbose=False)
    model = Forecaster(
        n_features=2, dropout=0.0, cell=cell, gradient_clip_val=clip, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3)
    )
    history = History()
    stop = EarlyStopping("val/loss", patience=10_000, stopping_threshold=0.005, check_on_train_epoch_end=False)
    trainer = L.Trainer(
        max_steps=max_steps, val_check_interval=50, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[history, stop], num_sanity_val_steps=0,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, AddingDataModule(seq_len=seq_len))
    seconds = time.perf_counter() - start
    learned = next((step for step, loss in history.points if loss < 0.01), None)
    finite = [loss for _, loss in history.points if math.isfinite(loss)]
    # EarlyStopping also ends the run when val/loss turns NaN/inf (check_finite): say so.
    ended = f"diverged at step {trainer.global_step}" if not math.isfinite(history.points[-1][1]) else ""
    return min(finite, default=float("nan")), learned, seconds, ended


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
    parser.add_argument("--clipping", nargs="+", default=["on", "off"], choices=["on", "off"])
    args = parser.parse_args()
    begin()
    print("\n| T | cell | clipping | best val MSE | steps to MSE < 0.01 | seconds |")
    print("|--:|:--|:--|--:|--:|--:|")
    for seq_len in args.lengths:
        for cell in args.cells:
            for clip in [1.0 if c == "on" else None for c in args.clipping]:
                best, learned, seconds, ended = run(seq_len, clip, cell, args.max_steps)
                clipping = "norm 1.0" if clip else "off"
                steps = learned if learned is not None else ended or f"not in {args.max_steps}"
                print(f"| {seq_len} | {cell} | {clipping} | {best:.4f} | {steps} | {seconds:.0f} |", flush=True)
