"""Command line: python -m forecasting fit|validate|test|predict|lr_find|diagnose|backtest|tune --config configs/<example>.yaml

A LightningCLI (and `backtest`, many fits: backtest.py) that
- links the data module's sizes (number of features, horizon) into the model,
  so a config never states them twice;
- always adds the callbacks every run wants, each configurable under its own key
  (`checkpoint`, `early_stopping`, `lr_monitor`, `prediction_writer`);
- prints a user error (`ForecastingError`: bad file, column, row or key) as one
  line and exits with status 2, without a traceback.
"""

import importlib
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from forecasting.callbacks.prediction_writer import PredictionWriter
from forecasting.callbacks.summary import RunSummary
from forecasting.checkpoints import check_checkpoint
from forecasting.data import base
from forecasting.errors import ForecastingError
from forecasting.models.forecaster import Forecaster
from forecasting.trainer import ForecastingTrainer


class ForecastingCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # Extra subcommands: Trainer methods of the same name (trainer.py); these are the
        # arguments the CLI fills with the objects it built.
        return {**LightningCLI.subcommands(), "lr_find": {"model", "datamodule"}, "diagnose": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.n_features", "model.n_features", apply_on="instantiate")
        parser.link_arguments("data.horizon", "model.horizon", apply_on="instantiate")
        parser.link_arguments("data.target_kind", "model.target_kind", apply_on="instantiate")
        # Dense loss and truncated BPTT need a target at every step of a training window.
        parser.link_arguments(
            ("model.dense_loss", "model.tbptt_steps"),
            "data.init_args.dense_targets",
            compute_fn=lambda dense_loss, tbptt_steps: dense_loss or tbptt_steps is not None,
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(RunSummary, "summary")  # best checkpoint vs baselines when fit/test end
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.save_last": True,  # last.ckpt: what `fit --ckpt_path last` resumes from
                # Metric names hold '/', which would make sub-folders: name files ourselves.
                "checkpoint.filename": "epoch{epoch:03d}-val_loss{val/loss:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "early_stopping.monitor": "val/loss",
                "early_stopping.patience": 10,
                "lr_monitor.logging_interval": "epoch",
                # Write checkpoints to a temporary file and rename: a kill while saving never
                # leaves a half-written last.ckpt (checkpoints.py).
                "trainer.plugins": [{"class_path": "forecasting.checkpoints.AtomicCheckpointIO"}],
            }
        )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint here (to take the model's hyperparameters from
        # it) before any hook of ours runs: resolve `last` and vet the file first, so an
        # unsafe or mismatched checkpoint is refused in one line (checkpoints.py).
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        if config is not None and config.get("ckpt_path") is not None:
            if subcommand == "fit" and config.ckpt_path == "last":
                resume_last(config)
            if config.ckpt_path not in ("last", "best", "hpc", "registry"):
                data = config.data.get("init_args") if config.get("data") else None
                check_checkpoint(config.ckpt_path, data.as_dict() if data else None, config.model.as_dict())
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        # jsonargparse turns an error raised while building a class chosen by class_path into a
        # multi-line ValueError. Build the data module once here (no I/O in __init__, so cheap)
        # so a bad data.* value reaches main() as the one-line ForecastingError it is.
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_clipping(config)
        data = config.get("data")
        if data is not None and data.get("class_path"):
            module, name = data.class_path.rsplit(".", 1)
            init = data.get("init_args")
            dm = getattr(importlib.import_module(module), name)(**(init.as_dict() if init else {}))
            base.check(dm)  # the sizes the CLI links next must exist: one line instead of a link traceback

    def before_fit(self) -> None:
        # Before Lightning starts (and its logger writes anything): one training batch checked
        # against the data contract and the model's sizes. (validate/test/predict restore the
        # data module's state from the checkpoint first, inside Lightning.)
        base.check_batch(self.datamodule, "fit", dense=getattr(self.model, "dense", False))


def resume_last(config) -> None:
    """`fit --ckpt_path last`: Lightning looks for last.ckpt only in the NEW run's folder
    (a fresh logger version), finds nothing and starts over. Resume the newest
    <save_dir>/<name>/version_N/checkpoints/last.ckpt instead, logging into that same version."""
    logger = config.trainer.get("logger")
    init = logger.get("init_args") if hasattr(logger, "get") else None
    if init is None or init.get("save_dir") is None:
        return
    runs = Path(init["save_dir"]) / (init.get("name") or "lightning_logs")
    found = sorted(runs.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if found:
        config.ckpt_path = str(found[-1])
        init["version"] = found[-1].parent.parent.name
        rank_zero_info(f"resuming from {found[-1]}")


def check_clipping(config) -> None:
    """One way to clip in both modes: model.gradient_clip_val. Lightning refuses
    trainer.gradient_clip_val under manual optimisation (truncated BPTT) with a message
    that does not say what to use instead, and clipping in both places clips twice."""
    tbptt = config.model.get("tbptt_steps") is not None
    if tbptt and config.trainer.get("accumulate_grad_batches", 1) != 1:
        raise ForecastingError("trainer.accumulate_grad_batches must be 1 with truncated BPTT (model.tbptt_steps)")
    trainer_clip = config.trainer.get("gradient_clip_val")
    if trainer_clip is None:
        return
    if tbptt:
        raise ForecastingError(
            f"trainer.gradient_clip_val ({trainer_clip}) cannot be used with truncated BPTT "
            "(model.tbptt_steps): set model.gradient_clip_val and model.gradient_clip_algorithm instead"
        )
    if config.model.get("gradient_clip_val") is not None:
        raise ForecastingError(
            f"both trainer.gradient_clip_val ({trainer_clip}) and model.gradient_clip_val are set: "
            "clip once, with model.gradient_clip_val (it works with full and truncated BPTT)"
        )


def build(args: list[str] | None = None, run: bool = True, cli_class=ForecastingCLI, **kwargs) -> ForecastingCLI:
    """The CLI without main()'s error handling: a ForecastingError propagates (tune.py runs trials with it)."""
    return cli_class(
        Forecaster,
        L.LightningDataModule,  # any data module: configs pick one by class_path
        subclass_mode_data=True,
        trainer_class=ForecastingTrainer,
        save_config_kwargs={"overwrite": True},  # re-running into the same version dir is fine
        args=args,
        run=run,
        **kwargs,
    )


def main(args: list[str] | None = None, run: bool = True) -> ForecastingCLI:
    """Entry point; `run=False` only builds the model, data module and trainer (tests).
    `backtest` and `tune` are not Trainer methods but many `fit` runs: backtest.py, tune.py."""
    if run and (sys.argv[1:] if args is None else args)[:1] == ["backtest"]:
        from forecasting import backtest

        return backtest.run(sys.argv[2:] if args is None else args[1:], build=lambda fold: main(fold, run=False))
    try:
        argv = sys.argv[1:] if args is None else args
        if argv and argv[0] == "tune":
            from forecasting.tune import tune  # imports this module: import on use

            return tune(argv[1:])
        return build(args, run)
    except ForecastingError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
