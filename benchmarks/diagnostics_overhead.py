"""Cost of the TensorBoard diagnostics: training throughput with them at their default intervals versus off.

    python benchmarks/diagnostics_overhead.py [--batches N] [--repeats 3] [--threads T]

Trains the default model (2 x 64 LSTM) on the bundled data for one epoch (all training
batches, or the first `--batches`) plus the whole validation split, both with a
TensorBoardLogger, once with `forecasting.callbacks.diagnostics.diagnostics()` and once
without. Two modes: the default example (full BPTT, window 64) and the long-window one
(truncated BPTT, window 256, k = 32: 8 optimiser steps per batch, so the per-step
diagnostics run 8 times as often). Runs alternate so that machine noise hits both alike;
throughput is training windows / wall time of the whole fit, validation included (where
gradient flow, gates and the forecast figure run). On a shared machine the wall-time ratio
is noisy, so the "on" runs also time every diagnostic hook: the share of the fit spent
inside them is the cost itself, whatever the other processes do. `--threads 1` also makes
the timings much less sensitive to other processes (no OpenMP threads waiting on each other).
"""

import argparse
import collections
import statistics
import tempfile
import time

import lightning as L
import torch
from common import begin
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from forecasting.callbacks.diagnostics import diagnostics
from forecasting.data.datamodule import PriceDataModule
from forecasting.models.forecaster import Forecaster

MODES = {"full BPTT, window 64": (64, None), "truncated BPTT, window 256, k=32": (256, 32)}


def timed(callbacks: list[Callback], clock: collections.Counter) -> list[Callback]:
    """Wrap every hook a callback overrides so that its wall time adds up in clock[class name]."""

    def wrap(hook, key):
        def timed_hook(*args, **kwargs):
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                clock[key] += time.perf_counter() - start

        return timed_hook

    for callback in callbacks:
        for name in dir(callback):
            if name.startswith("on_") and getattr(type(callback), name) is not getattr(Callback, name, None):
                # Lightning looks hooks up on the instance
                setattr(callback, name, wrap(getattr(callback, name), type(callback).__name__))
    return callbacks


def run(dm, k: int | None, batches: int | None, callbacks: list[Callback], log_dir: str) -> float:
    """Seconds for one epoch of fit."""
    torch.manual_seed(0)
    model = Forecaster(n_features=dm.n_features, tbptt_steps=k, burn_in=16)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=batches or 1.0, logger=TensorBoardLogger(log_dir, default_hp_metric=False),
        callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=20,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, dm)
    return time.perf_counter() - start


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=None, help="training batches per run (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    begin(threads=args.threads)
    rows, shares = [], {}
    with tempfile.TemporaryDirectory() as log_dir:
        for mode, (window, k) in MODES.items():
            dm = PriceDataModule(adjust_column="adj_close", window=window, batch_size=64, dense_targets=k is not None,
                                 val_start="2009-01-01", test_start="2011-01-01")  # fmt: skip
            dm.setup("fit")
            n_train, n_val = len(dm.dataset("train")), len(dm.dataset("val"))  # built once, outside the timing
            n_train = min(args.batches * dm.batch_size, n_train) if args.batches else n_train
            run(dm, k, 2, diagnostics(), log_dir)  # warm-up: the first calls of each kernel are slow
            seconds, clock = {"off": [], "on": []}, collections.Counter()
            for _ in range(args.repeats):
                seconds["off"].append(run(dm, k, args.batches, [], log_dir))
                seconds["on"].append(run(dm, k, args.batches, timed(diagnostics(), clock), log_dir))
            speed = {key: [n_train / s for s in values] for key, values in seconds.items()}
            in_hooks = sum(clock.values()) / sum(seconds["on"])
            rows.append((mode, n_train, n_val, speed, in_hooks))
            shares[mode] = {name: t / sum(seconds["on"]) for name, t in clock.most_common()}
    print(f"\none epoch, batch 64, {args.repeats} alternating repeats; windows/s: best of the repeats\n")
    print("| mode | train / val windows | off: windows/s | on: windows/s | on / off (best) | on / off (median) "
          "| time in diagnostic hooks |")  # fmt: skip
    print("|:--|--:|--:|--:|--:|--:|--:|")
    for mode, n_train, n_val, speed, in_hooks in rows:
        best = max(speed["on"]) / max(speed["off"])
        median = statistics.median(speed["on"]) / statistics.median(speed["off"])
        print(f"| {mode} | {n_train} / {n_val} | {max(speed['off']):.0f} | {max(speed['on']):.0f} | {best:.3f} "
              f"| {median:.3f} | {in_hooks:.1%} |")  # fmt: skip
    print("\nshare of the fit's wall time inside each callback's hooks\n")
    names = list(next(iter(shares.values())))
    print("| callback | " + " | ".join(shares) + " |")
    print("|:--|" + "--:|" * len(shares))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{s.get(name, 0):.1%}" for s in shares.values()) + " |")
