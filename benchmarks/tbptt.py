"""Full versus truncated BPTT on the same long windows: throughput and activation memory.

    python benchmarks/tbptt.py [--window 256] [--batches 20] [--repeats 2]

Trains the default model (2 x 64 LSTM) with Lightning on the bundled data, window
`--window`, once with full BPTT and once per chunk length k, alternating the runs
`--repeats` times so machine noise hits all of them alike. Activation memory is
the peak bytes of tensors autograd saved for backward (saved-tensor hooks), the
part of memory that grows with the sequence length; truncated BPTT frees it after
every chunk, so it should fall roughly like k / window.
"""

import argparse
import time

import lightning as L
import torch
from common import begin

from forecasting.data.datamodule import PriceDataModule
from forecasting.models.forecaster import Forecaster


class SavedBytes(L.Callback):
    """Peak bytes saved for backward within one graph (reset after each backward)."""

    def __init__(self):
        self.live, self.peak = {}, 0

    def pack(self, tensor):
        self.live[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        self.peak = max(self.peak, sum(self.live.values()))
        return tensor

    def on_after_backward(self, trainer, pl_module):
        self.live.clear()


def run(dm, window: int, k: int | None, batches: int) -> tuple[float, int]:
    torch.manual_seed(0)
    model = Forecaster(n_features=dm.n_features, tbptt_steps=k, dense_loss=True, burn_in=16)
    saved = SavedBytes()
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[saved],
    )  # fmt: skip
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        trainer.fit(model, dm)
    seconds = time.perf_counter() - start
    return batches * dm.batch_size / seconds, saved.peak


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunks", type=int, nargs="+", default=[128, 64, 32])
    args = parser.parse_args()
    begin()
    dm = PriceDataModule(adjust_column="adj_close", window=args.window, batch_size=64, dense_targets=True,
                         val_start="2009-01-01", test_start="2011-01-01")  # fmt: skip
    dm.setup("fit")
    modes = [None, *args.chunks]
    results = {k: [] for k in modes}
    for _ in range(args.repeats):
        for k in modes:
            results[k].append(run(dm, args.window, k, args.batches))
    base_speed = max(r[0] for r in results[None])
    base_mem = results[None][0][1]
    print(f"\nwindow {args.window}, batch 64, {args.batches} batches x {args.repeats} repeats (best of repeats)\n")
    print("| mode | windows/s | vs full | activation MB | vs full | k / window |")
    print("|:--|--:|--:|--:|--:|--:|")
    for k in modes:
        speed, mem = max(r[0] for r in results[k]), results[k][0][1]
        name = "full BPTT" if k is None else f"truncated, k={k}"
        ratio = 1 if k is None else k / args.window
        mb = mem / 2**20
        print(f"| {name} | {speed:.0f} | {speed / base_speed:.2f} | {mb:.1f} | {mem / base_mem:.3f} | {ratio:.3f} |")
