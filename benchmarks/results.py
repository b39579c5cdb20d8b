"""Train a config, then score the best checkpoint and the baselines on the same windows.

    python benchmarks/results.py --config configs/volatility.yaml
    python benchmarks/results.py --config configs/returns.yaml
    python benchmarks/results.py --config configs/volatility.yaml --config configs/long_tbptt.yaml

Prints a markdown table per split (val, then test) in the target's original units.
The model is chosen on val/loss only (checkpoint + early stopping); the test split
is scored once, after training, and never used to tune anything.
"""

import argparse
import time

import numpy as np
import torch
from common import begin

from forecasting.baselines import scores
from forecasting.cli import main
from forecasting.models.forecaster import Forecaster


def forecasts(model: Forecaster, dm, stage: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Model and baseline forecasts, and the actual values, for every window of `stage`."""
    ds = dm.dataset(stage)
    batch = ds.__getitems__(list(range(len(ds))))
    model.eval()
    with torch.no_grad():
        pred = model(batch["x"]) * batch["y_scale"] + batch["y_loc"]
    actual = batch["y"][:, -1] if batch["y"].dim() == 3 else batch["y"]
    actual = actual * batch["y_scale"] + batch["y_loc"]
    return {"model": pred.numpy(), **{k: v.numpy() for k, v in batch["baselines"].items()}}, actual.numpy()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", action="append", help="config file; repeat to stack overlays")
    args, extra = parser.parse_known_args()
    begin()
    start = time.perf_counter()
    configs = [arg for c in args.config or ["configs/volatility.yaml"] for arg in ("--config", c)]
    cli = main(["fit", *configs, "--trainer.enable_progress_bar", "false", *extra])
    best = cli.trainer.checkpoint_callback.best_model_path
    print(f"# fit took {time.perf_counter() - start:.0f} s, {cli.trainer.current_epoch} epochs; best: {best}")
    model = Forecaster.load_from_checkpoint(best, weights_only=True)
    dm = cli.datamodule
    for stage in ("val", "test"):
        predicted, actual = forecasts(model, dm, stage)
        table = scores(predicted, actual, direction=dm.target_kind == "return")
        print(f"\n{stage} split: {len(actual)} windows, target {dm.target} (original units)\n")
        print(table.to_markdown(floatfmt=".4g"))
