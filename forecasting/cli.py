"""Command line: python -m forecasting fit|validate|test|predict --config configs/<example>.yaml

A LightningCLI that
- links the data module's sizes (number of features, horizon) into the model,
  so a config never states them twice;
- always adds the callbacks every run wants, each configurable under its own key
  (`checkpoint`, `early_stopping`, `lr_monitor`, `prediction_writer`);
- prints a user error (`ForecastingError`: bad file, column, row or key) as one
  line and exits with status 2, without a traceback.
"""

import importlib
import sys

from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from forecasting.callbacks.prediction_writer import PredictionWriter
from forecasting.data.datamodule import PriceDataModule
from forecasting.errors import ForecastingError
from forecasting.models.forecaster import Forecaster


class ForecastingCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.n_features", "model.n_features", apply_on="instantiate")
        parser.link_arguments("data.horizon", "model.horizon", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
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
            }
        )

    def before_instantiate_classes(self) -> None:
        # jsonargparse turns an error raised while building a class chosen by class_path into a
        # multi-line ValueError. Build the data module once here (no I/O in __init__, so cheap)
        # so a bad data.* value reaches main() as the one-line ForecastingError it is.
        data = (self.config[self.subcommand] if self.subcommand else self.config).get("data")
        if data is not None and data.get("class_path"):
            module, name = data.class_path.rsplit(".", 1)
            getattr(importlib.import_module(module), name)(**data.init_args.as_dict())


def main(args: list[str] | None = None) -> ForecastingCLI:
    try:
        return ForecastingCLI(
            Forecaster,
            PriceDataModule,
            subclass_mode_data=True,  # configs pick the data module by class_path
            save_config_kwargs={"overwrite": True},  # re-running into the same version dir is fine
            args=args,
        )
    except ForecastingError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
