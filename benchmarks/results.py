"""Train a config, then score the best checkpoint and the baselines on the same windows.

    python benchmarks/results.py --config configs/volatility.yaml
    python benchmarks/results.py --config configs/returns.yaml

Prints a markdown table per split (val, then test) in the target's original units.
The model is chosen on val/loss only (checkpoint + early stopping); the test split
is scored once, after training, and never used to tune anything.
"""

import argparse
import platform
import sys
import time

import lightning
import numpy as np
import torch

from forecasting.baselines import baseline_forecasts, scores
from forecasting.cli import main
from forecasting.models.forecaster import Forecaster


def model_forecasts(model: Forecaster, dm, stage: str) -> np.ndarray:
    ds = dm.dataset(stage)
    model.eval()
    with torch.no_grad():
        batch = ds.__getitems__(list(range(len(ds))))
        return (model(batch["x"]) * batch["y_scale"] + batch["y_loc"]).numpy()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/volatility.yaml")
    args, extra = parser.parse_known_args()
    print(f"# {' '.join(sys.argv)}")
    print(f"# python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    start = time.perf_counter()
    cli = main(["fit", "--config", args.config, "--trainer.enable_progress_bar", "false", *extra])
    best = cli.trainer.checkpoint_callback.best_model_path
    print(f"# fit took {time.perf_counter() - start:.0f} s, {cli.trainer.current_epoch} epochs; best: {best}")
    model = Forecaster.load_from_checkpoint(best, weights_only=True)
    dm = cli.datamodule
    for stage in ("val", "test"):
        forecasts = baseline_forecasts(dm, stage)
        table = scores(forecasts, model_forecasts(model, dm, stage), direction=dm.target == "log_return")
        print(f"\n{stage} split: {len(forecasts['actual'])} windows, target {dm.target} (original units)\n")
        print(table.to_markdown(floatfmt=".4g"))
