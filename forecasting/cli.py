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

import lightning as L
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from forecasting import validation
from forecasting.callbacks.prediction_writer import PredictionWriter
from forecasting.callbacks.summary import RunSummary
from forecasting.checkpoints import Checkpoints, check_checkpoint
from forecasting.data import base
from forecasting.errors import ForecastingError
from forecasting.models.forecaster import Forecaster
from forecasting.trainer import ForecastingTrainer


class ForecastingCLI(LightningCLI):
    def __init__(self, *args, only: str | None = None, **kwargs) -> None:
        # A run uses one subcommand, yet LightningCLI builds a parser for every one (each walks
        # the Trainer's, model's and callbacks' signatures): building only the requested one
        # saves a noticeable part of every process's start-up (BENCHMARKS.md, whole runs).
        if only is not None:
            every = type(self).subcommands()
            self.subcommands = lambda: {only: every[only]}
        super().__init__(*args, **kwargs)

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
        # Stream mode (data.mode: stream) lays the training rows out in chunks of model.tbptt_steps.
        # A data module without this argument simply does not receive it.
        parser.link_arguments("model.tbptt_steps", "data.init_args.tbptt_steps")
        parser.add_lightning_class_args(Checkpoints, "checkpoint")  # last.ckpt: the latest state, one write
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
                # A run shorter than one validation (max_steps on the debug overlay) has no val/loss:
                # not an error. A misspelt monitor is refused before training (validation.check_monitors).
                "early_stopping.strict": False,
                "lr_monitor.logging_interval": "epoch",
                # Write checkpoints to a temporary file and rename: a kill while saving never
                # leaves a half-written last.ckpt (checkpoints.py).
                "trainer.plugins": [{"class_path": "forecasting.checkpoints.AtomicCheckpointIO"}],
            }
        )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint here (to take the model's hyperparameters from
        # it) before any hook of ours runs: resolve `last`/`best`, require weights for
        # validate/test/predict, and vet the file first, so an unsafe, corrupted or mismatched
        # checkpoint is refused in one line (checkpoints.py, validation.py).
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        if config is None:
            return super()._parse_ckpt_path()
        # Config checks run here, the first hook after parsing (before Lightning prints anything).
        check_clipping(config)
        validation.check_config(subcommand, config)
        dm = build_data(config)
        validation.resolve_ckpt_path(subcommand, config)
        if config.get("ckpt_path") not in (None, "last", "best"):
            data = config.data.get("init_args") if config.get("data") else None
            data = data.as_dict() if data else None
            model = {**config.model.as_dict(), **linked_sizes(dm)}
            ckpt = check_checkpoint(config.ckpt_path, data, model)
            validation.compare_data(config.ckpt_path, ckpt, data, subcommand)
            if subcommand == "fit":
                validation.check_not_done(config.ckpt_path, ckpt, config.trainer.as_dict())
            self._ckpt_state = ckpt["state_dict"]
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        config = self.config[self.subcommand] if self.subcommand else self.config
        validation.check_monitors(config, self.model)
        state = getattr(self, "_ckpt_state", None)
        if state is not None:
            validation.check_state_shapes(config.ckpt_path, state, self.model)
        if self.subcommand is not None:  # a run, not a build (tests, tune and backtest folds build first)
            train = self.subcommand in ("fit", "lr_find", "diagnose")
            validation.check_precision(self.trainer, self.model, train, configured=config.trainer.get("precision"))

    def before_fit(self) -> None:
        # Before Lightning starts (and its logger writes anything): one training batch checked
        # against the data contract and the model's sizes. (validate/test/predict restore the
        # data module's state from the checkpoint first, inside Lightning.)
        base.check_batch(self.datamodule, "fit", dense=getattr(self.model, "dense", False))


def build_data(config):
    """The configured data module (its __init__ validates the data.* keys and reads nothing).
    Built here once because jsonargparse turns an error raised while building a class chosen
    by class_path into a multi-line ValueError; this way it reaches main() as one line."""
    data = config.get("data")
    if data is None or not data.get("class_path"):
        return None
    module, name = data.class_path.rsplit(".", 1)
    init = data.get("init_args")
    dm = getattr(importlib.import_module(module), name)(**(init.as_dict() if init else {}))
    base.check(dm)  # the sizes the CLI links must exist: one line instead of a link traceback
    return dm


def linked_sizes(data) -> dict:
    """The model sizes the CLI links from the data module at instantiation (not yet in the config)."""
    names = ("n_features", "horizon", "target_kind")
    return {k: getattr(data, k) for k in names if data is not None and hasattr(data, k)}


class KeepConfigOnResume(SaveConfigCallback):
    """Resuming (`fit --ckpt_path`) writes the new invocation to config.resumed.yaml: the run's
    config.yaml keeps recording what trained it, even if the resumed run fails."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and self.config.get("ckpt_path"):  # trainer.ckpt_path is set only after setup
            self.config_filename = "config.resumed.yaml"
        super().setup(trainer, pl_module, stage)


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
    # Parse errors raise (not print ~100 usage lines): main prints the one line that matters.
    strict = {"exit_on_error": False}
    only = requested_subcommand(args) if run else None
    names = [only] if only else ForecastingCLI.subcommands()
    kwargs.setdefault("parser_kwargs", {**strict, **{name: dict(strict) for name in names}})
    return cli_class(
        Forecaster,
        L.LightningDataModule,  # any data module: configs pick one by class_path
        subclass_mode_data=True,
        trainer_class=ForecastingTrainer,
        save_config_callback=KeepConfigOnResume,
        save_config_kwargs={"overwrite": True},  # re-running into the same version dir is fine
        args=args,
        run=run,
        only=only,
        **kwargs,
    )


def requested_subcommand(args: list[str] | None) -> str | None:
    """The subcommand a command line names: the first word after the top-level options
    (`-c/--config FILE`, `--print_config[=flags]`); None when that is not a subcommand, so an
    unknown or missing one still gets the full parser and its list of choices."""
    argv = list(sys.argv[1:] if args is None else args)
    while argv:
        word = argv.pop(0)
        if word in ("-c", "--config"):
            argv = argv[1:]
        elif not (word.startswith("--config=") or word.startswith("--print_config")):
            return word if word in ForecastingCLI.subcommands() else None
    return None


def main(args: list[str] | None = None, run: bool = True) -> ForecastingCLI:
    """Entry point; `run=False` only builds the model, data module and trainer (tests).
    `backtest` and `tune` are not Trainer methods but many `fit` runs: backtest.py, tune.py."""
    if run and (sys.argv[1:] if args is None else args)[:1] == ["backtest"]:
        from forecasting import backtest

        return backtest.run(sys.argv[2:] if args is None else args[1:], build=lambda fold: main(fold, run=False))
    argv = sys.argv[1:] if args is None else args
    subcommand = next((a for a in argv if a in ForecastingCLI.subcommands()), None)
    try:
        if argv and argv[0] == "tune":
            from forecasting.tune import tune  # imports this module: import on use

            return tune(argv[1:])
        validation.check_yaml_files(argv)
        return build(args, run)
    except ForecastingError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except ArgumentError as err:
        print(f"error: {validation.argument_error_line(str(err), subcommand)}", file=sys.stderr)
        sys.exit(2)
