"""What a walk-forward backtest costs beyond its fits.

    python benchmarks/backtest.py [--folds 3] [--epochs 1] [--test_period 1y] [--config configs/volatility.yaml]

Runs `python -m forecasting backtest` (in a temporary folder), then one plain `fit` of the same
config with fold 0's split dates and epochs. Prints per fold: the fit, and what the backtest
adds (building the fold's CLI and data module, testing the best checkpoint, writing its
forecasts), next to the plain fit's wall time; then the overhead beyond the fits (set-up,
per-fold extras, pooling, DM tests, figures) as a share of the backtest's wall time.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import begin, quiet

from forecasting.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", action="append", help="config file; repeat to stack overlays")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--test_period", default="1y")
    args = parser.parse_args()
    begin()
    quiet()
    configs = [arg for c in args.config or ["configs/volatility.yaml"] for arg in ("--config", c)]
    tmp = Path(tempfile.mkdtemp())
    common = [*configs, "--trainer.max_epochs", str(args.epochs), "--trainer.enable_progress_bar", "false",
              "--trainer.enable_model_summary", "false",
              "--trainer.logger.init_args.save_dir", str(tmp / "logs")]  # fmt: skip
    start = time.perf_counter()
    plan = ["--folds", str(args.folds), "--test_period", args.test_period, "--out", str(tmp / "bt")]
    bt = main(["backtest", *common, *plan])
    total = time.perf_counter() - start
    start = time.perf_counter()
    bt.merge()  # again, alone: what pooling, DM tests, figure and TensorBoard summary cost
    merge = time.perf_counter() - start
    records = [json.loads((tmp / "bt" / f"fold_{f.index}.json").read_text()) for f in bt.folds]
    f0 = bt.folds[0]
    start = time.perf_counter()
    split = ["--data.init_args.val_start", f0.val_start, "--data.init_args.test_start", f0.test_start]
    cli = main(["fit", *common, *split])
    plain = time.perf_counter() - start
    print(f"\nplain `fit` with fold 0's split: {plain:.1f} s wall ({cli.trainer.current_epoch} epochs)\n")
    print("| fold | epochs | fit s | set-up s | test s | forecasts s | fold total s | fold total / plain fit |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in records:
        s = r["seconds"]
        print(f"| {r['fold']} | {r['epochs']} | {s['fit']:.1f} | {s['setup']:.1f} | {s['test']:.1f} | "
              f"{s['forecasts']:.2f} | {s['total']:.1f} | {s['total'] / plain:.2f} |")  # fmt: skip
    fits = sum(r["seconds"]["fit"] for r in records)
    extras = sum(r["seconds"][k] for r in records for k in ("setup", "test", "forecasts"))
    setup = total - sum(r["seconds"]["total"] for r in records) - merge
    print(
        f"\nbacktest wall {total:.1f} s: fits {fits:.1f} s; overhead {total - fits:.1f} s = "
        f"{(total - fits) / total:.1%} of the total"
    )
    print(
        f"  overhead parts: plan (config + data read once) {setup:.1f} s, per-fold set-up + test + forecasts "
        f"{extras:.1f} s, pooling + DM + figure + summary {merge:.1f} s"
    )
