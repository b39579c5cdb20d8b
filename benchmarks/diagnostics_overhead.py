"""Cost of the TensorBoard diagnostics: training throughput with them at their default intervals versus off.

    python benchmarks/diagnostics_overhead.py [--batches N] [--repeats 3]

Trains the default model (2 x 64 LSTM) on the bundled data for one epoch (all training
batches, or the first `--batches`) plus the whole validation split, both with a TensorBoardLogger, once with
`forecasting.callbacks.diagnostics.diagnostics()` and once without. Two modes: the default
example (full BPTT, window 64) and the long-window one (truncated BPTT, window 256, k = 32:
8 optimiser steps per batch, so the per-step diagnostics run 8 times as often). Runs
alternate so machine noise hits both alike; throughput is training windows / wall time of
the whole fit, validation included (that is where gradient flow, gates and the forecast
figure run).
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from forecasting.callbacks.diagnostics import diagnostics
from forecasting.data.datamodule import PriceDataModule
from forecasting.models.forecaster import Forecaster

MODES = {"full BPTT, window 64": (64, None), "truncated BPTT, window 256, k=32": (256, 32)}


def run(dm: PriceDataModule, k: int | None, batches: int | None, on: bool, log_dir: str) -> float:
    torch.manual_seed(0)
    model = Forecaster(n_features=dm.n_features, tbptt_steps=k, burn_in=16)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=batches or 1.0, logger=TensorBoardLogger(log_dir, default_hp_metric=False),
        callbacks=diagnostics() if on else [], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=20,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, dm)
    windows = min(batches * dm.batch_size, len(dm.dataset("train"))) if batches else len(dm.dataset("train"))
    return windows / (time.perf_counter() - start)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=None, help="training batches per run (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"# python {' '.join(sys.argv)}")
    print(f"# {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, python {platform.python_version()}, "
          f"torch {torch.__version__}, lightning {L.__version__}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as log_dir:
        for name, (window, k) in MODES.items():
            dm = PriceDataModule(adjust_column="adj_close", window=window, batch_size=64, dense_targets=k is not None,
                                 val_start="2009-01-01", test_start="2011-01-01")  # fmt: skip
            dm.setup("fit")
            n_train, n_val = len(dm.dataset("train")), len(dm.dataset("val"))  # built once, outside the timing
            run(dm, k, 2, False, log_dir)  # warm-up: first calls of each kernel are slow
            speeds = {False: [], True: []}
            for _ in range(args.repeats):
                for on in (False, True):
                    speeds[on].append(run(dm, k, args.batches, on, log_dir))
            rows.append((name, speeds, min(args.batches * 64, n_train) if args.batches else n_train, n_val))
    print(f"\none epoch, batch 64, {args.repeats} alternating repeats; windows/s: best of the repeats\n")
    print("| mode | train / val windows | off: windows/s | on: windows/s | on / off (best) | on / off (median) |")
    print("|:--|--:|--:|--:|--:|--:|")
    for name, speeds, n_train, n_val in rows:
        best = max(speeds[True]) / max(speeds[False])
        median = statistics.median(speeds[True]) / statistics.median(speeds[False])
        off, on = max(speeds[False]), max(speeds[True])
        print(f"| {name} | {n_train} / {n_val} | {off:.0f} | {on:.0f} | {best:.3f} | {median:.3f} |")
