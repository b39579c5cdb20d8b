"""Lightning's Trainer plus the template's own subcommands.

LightningCLI runs `python -m forecasting <name>` by calling the Trainer method of
that name, so each extra subcommand is a method here (registered in cli.py):

    python -m forecasting lr_find  --config configs/volatility.yaml
    python -m forecasting diagnose --config configs/volatility.yaml
"""

from pathlib import Path

import lightning as L
import torch.utils.deterministic
from lightning.pytorch.tuner import Tuner

from forecasting.callbacks.common import tensorboard
from forecasting.diagnose import report, run_diagnose, suggested_lr


class ForecastingTrainer(L.Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # `deterministic: true` (torch.use_deterministic_algorithms) also fills every new
        # uninitialised tensor with NaN, a debugging aid that made each LSTM forward ~60% slower on
        # CPU (BENCHMARKS.md). Kernel choice stays deterministic without it; only code that reads
        # memory it never wrote would differ, and the NaN guard catches what that produces.
        if torch.are_deterministic_algorithms_enabled():
            torch.utils.deterministic.fill_uninitialized_memory = False

    def lr_find(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        min_lr: float = 1e-6,
        max_lr: float = 1.0,
        num_training: int = 100,
    ) -> float | None:
        """Sweep the learning rate up over `num_training` steps (Smith 2017) and suggest one.

        Saves the LR-loss curve as lr_find.png in the log dir. Always runs with full BPTT:
        Lightning's LR finder drives automatic optimisation only.
        """
        tbptt = model.hparams.get("tbptt_steps")
        if tbptt is not None:
            if self.is_global_zero:
                print(f"lr_find: running with full BPTT (model.tbptt_steps={tbptt} is ignored for the sweep)")
            model.hparams.tbptt_steps, model.automatic_optimization = None, True
        try:
            finder = Tuner(self).lr_find(
                model, datamodule=datamodule, min_lr=min_lr, max_lr=max_lr, num_training=num_training,
                update_attr=False,
            )  # fmt: skip
        finally:
            if tbptt is not None:
                model.hparams.tbptt_steps, model.automatic_optimization = tbptt, False
        if finder is None or not self.is_global_zero:
            return None
        suggestion, at_min = suggested_lr(finder)
        out = Path(self.log_dir or ".") / "lr_find.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        figure = finder.plot(suggest=False)
        if suggestion is not None:  # our suggestion, not Lightning's (see suggested_lr)
            i = finder.results["lr"].index(suggestion)
            figure.axes[0].plot(suggestion, finder.results["loss"][i], "o", color="red", markersize=10)
        figure.savefig(out)
        if suggestion is None:
            print(f"lr_find: no clear suggestion (the loss never fell steadily); look at {out}")
        else:
            print(
                f"lr_find: suggested learning rate {suggestion:.3g}: where the loss falls fastest "
                f"(it is lowest at {at_min:.3g}; plot: {out})\n"
                f"  set it in the config as  model.optimizer.init_args.lr: {suggestion:.3g}\n"
                f"  or on the command line:  --model.optimizer.init_args.lr {suggestion:.3g}"
            )
        return suggestion

    def diagnose(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        steps: int = 200,
        lr_find: bool = True,
    ) -> None:
        """Train `steps` optimiser steps on a copy of the setup and print a PASS / WARN / FAIL
        report on each known cause of an LSTM not learning (forecasting/diagnose.py)."""
        checks, ranges = run_diagnose(self, model, datamodule, steps, lr_find)
        if self.is_global_zero:
            print(report(checks, self.log_dir, tensorboard(self), ranges))
