"""Hyperparameters in TensorBoard's HParams tab, with the final `val/loss` as `hp_metric`.

The configs create the TensorBoardLogger with `default_hp_metric: false`, so Lightning does
not log its placeholder hp_metric of -1; this callback logs the real one when `fit` ends.
"""

from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger


class HParamsMetric(Callback):
    """At the end of `fit`: the module's and the data module's hyperparameters (the same flat dict
    Lightning writes to hparams.yaml), `hp_metric` = the last `monitor` value, and
    `hp/best_<monitor>` = the best checkpoint's score when a ModelCheckpoint monitors it."""

    def __init__(self, monitor: str = "val/loss"):
        self.monitor = monitor

    def on_fit_end(self, trainer, pl_module):
        final = trainer.callback_metrics.get(self.monitor)
        if final is None:  # no validation ran (limit_val_batches: 0)
            return
        datamodule = trainer.datamodule
        params = {**(datamodule.hparams_initial if datamodule is not None else {}), **pl_module.hparams_initial}
        metrics = {"hp_metric": float(final)}
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.monitor == self.monitor and checkpoint.best_model_score is not None:
            metrics[f"hp/best_{self.monitor.replace('/', '_')}"] = float(checkpoint.best_model_score)
        for logger in trainer.loggers:  # both write on rank zero only
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(params, metrics, step=trainer.global_step)
            else:  # other loggers got the hyperparameters when fit started
                logger.log_metrics(metrics, step=trainer.global_step)
