"""Windowed full BPTT vs windowed truncated BPTT vs stream mode, on the bundled data.

    python benchmarks/stream.py                          # every mode, then the table
    python benchmarks/stream.py --only stream_k16 --results runs.json   # one mode, appended to runs.json
    python benchmarks/stream.py --table --results runs.json             # the table of what runs.json holds

For each mode: seconds per training epoch (validation excluded), optimiser steps per epoch,
wall-clock seconds from the start of fit until val MSE (original units, the days every mode
scores) first reaches HAR's val MSE, the best val MSE, and the test MSE of the best
checkpoint, scored once after training. Modes:

    windowed_full   configs/volatility.yaml (64-day windows, full BPTT)
    windowed_tbptt  + configs/long_tbptt.yaml (256-day windows, chunks of 32)
    stream_k16/32/64  + configs/stream.yaml with model.tbptt_steps 16 / 32 / 64

`--max-minutes` caps each fit (trainer.max_time); `--epochs` overrides trainer.max_epochs;
`--seed` (repeatable) sets seed_everything (default 42, the configs' own). Wall-clock columns
depend on the machine and its load; the epochs and steps to HAR do not.
"""

import argparse
import json
import time
from pathlib import Path

from common import begin, quiet
from lightning.pytorch import Callback

from forecasting.cli import main

BASE = ["--config", "configs/volatility.yaml"]
MODES = {
    "windowed_full": BASE,
    "windowed_tbptt": [*BASE, "--config", "configs/long_tbptt.yaml"],
    **{f"stream_k{k}": [*BASE, "--config", "configs/stream.yaml", "--model.tbptt_steps", str(k)] for k in (16, 32, 64)},
}


class Timeline(Callback):
    """Wall time, optimiser steps and val MSE (model and HAR) at every validation; epoch times."""

    def __init__(self):
        self.start, self.points, self.epochs, self.steps = time.perf_counter(), [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch, self._step, self._val = time.perf_counter(), trainer.global_step, 0.0

    def on_validation_start(self, trainer, pl_module):
        self._val_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        # Lightning validates inside the epoch (before this hook): its time is taken out.
        self.epochs.append(time.perf_counter() - self._epoch - self._val)
        self.steps.append(trainer.global_step - self._step)

    def on_validation_end(self, trainer, pl_module):
        if hasattr(self, "_epoch"):
            self._val += time.perf_counter() - self._val_start
        m = trainer.callback_metrics
        if trainer.sanity_checking or "val/mse_orig" not in m:
            return
        mse, har = float(m["val/mse_orig"]), float(m["val/baseline_mse_har"])
        self.points.append((time.perf_counter() - self.start, mse, har, trainer.current_epoch + 1, trainer.global_step))


def run(name: str, seed: int, extra: list[str]) -> dict:
    args = [*MODES[name], "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.name",
            f"bench_{name}", "--seed_everything", str(seed), *extra]  # fmt: skip
    cli = main(args, run=False)
    timeline = Timeline()
    cli.trainer.callbacks.append(timeline)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    test = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    reached = next((p for p in timeline.points if p[1] <= p[2]), None)
    return {
        "mode": name,
        "seed": seed,
        "epochs": len(timeline.epochs),
        "s_per_epoch": sum(timeline.epochs) / max(1, len(timeline.epochs)),
        "steps_per_epoch": timeline.steps[0] if timeline.steps else 0,
        "s_to_har": reached and reached[0],
        "epochs_to_har": reached and reached[3],
        "steps_to_har": reached and reached[4],
        "best_val_mse": min(p[1] for p in timeline.points),
        "har_val_mse": timeline.points[0][2],
        "test_mse": float(test["test/mse_orig"]),
        "har_test_mse": float(test["test/baseline_mse_har"]),
        "fit_s": timeline.points[-1][0],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| mode | seed | epochs | s/epoch | steps/epoch | to HAR val MSE: s | epochs | steps "
        "| best val MSE | test MSE | fit s |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        if r["s_to_har"] is None:
            har = "not reached | | "
        else:
            har = f"{r['s_to_har']:.1f} | {r['epochs_to_har']} | {r['steps_to_har']}"
        lines.append(
            f"| {r['mode']} | {r['seed']} | {r['epochs']} | {r['s_per_epoch']:.2f} | {r['steps_per_epoch']} | {har} | "
            f"{r['best_val_mse']:.4f} | {r['test_mse']:.4f} | {r['fit_s']:.0f} |"
        )
    lines.append(f"\nHAR: val MSE {rows[0]['har_val_mse']:.4f}, test MSE {rows[0]['har_test_mse']:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help=f"comma-separated modes of {list(MODES)}")
    parser.add_argument("--results", help="JSON file the results are appended to (and the table read from)")
    parser.add_argument("--table", action="store_true", help="only print the table of --results")
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, action="append", help="seed_everything; repeat for several runs")
    args = parser.parse_args()
    begin()
    quiet()
    path = Path(args.results) if args.results else None
    done = json.loads(path.read_text()) if path and path.exists() else []
    if not args.table:
        extra = [] if args.epochs is None else ["--trainer.max_epochs", str(args.epochs)]
        if args.max_minutes:
            extra += ["--trainer.max_time", f"00:00:{int(args.max_minutes):02d}:{int(args.max_minutes % 1 * 60):02d}"]
        for seed in args.seed or [42]:
            for name in args.only.split(",") if args.only else MODES:
                result = run(name, seed, extra)
                print(json.dumps(result))
                done = [r for r in done if (r["mode"], r["seed"]) != (name, seed)] + [result]
                if path:
                    path.write_text(json.dumps(done, indent=1))
    order = list(MODES)
    print(table(sorted(done, key=lambda r: (order.index(r["mode"]), r["seed"]))))
