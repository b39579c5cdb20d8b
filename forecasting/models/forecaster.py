"""The LightningModule: wraps the network (lstm.py) with a loss, metrics and an optimiser.

A batch from the data module is a dict: x (B, window, F) scaled inputs; y (B, H)
scaled targets of the window's last step, or (B, window, H) with dense targets;
y_loc, y_scale (B, 1) to undo the target scaling; row (B,) the window's last row.

Metrics: `stage/loss` (the training loss, scaled units), `stage/mae`,
`stage/rmse` (scaled units) and `stage/mae_orig`, `stage/rmse_orig` (the
target's original units, e.g. log variance). Validation and test always score
the forecast made at the end of each window.

Example: python -m forecasting fit --config configs/volatility.yaml
"""

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError

from forecasting.errors import ForecastingError
from forecasting.models.lstm import CELLS, INITS, StackedRNN

LOSSES = {"mse": nn.MSELoss, "mae": nn.L1Loss, "huber": nn.HuberLoss}


def metrics() -> nn.ModuleDict:
    """torchmetrics accumulate over the epoch and reduce across DDP ranks."""
    return nn.ModuleDict(
        {
            "mae": MeanAbsoluteError(),
            "rmse": MeanSquaredError(squared=False),
            "mae_orig": MeanAbsoluteError(),
            "rmse_orig": MeanSquaredError(squared=False),
        }
    )


class Forecaster(L.LightningModule):
    def __init__(
        self,
        n_features: int = 3,  # linked from data.features by the CLI
        horizon: int = 1,  # linked from data.horizon by the CLI
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.1,
        cell: str = "lstm",
        init: str = "orthogonal",
        forget_bias: float = 1.0,
        loss: str = "mse",
        dense_loss: bool = False,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
    ):
        super().__init__()
        checks = {
            "model.cell": (cell in CELLS, f"use one of {list(CELLS)}"),
            "model.init": (init in INITS, f"use one of {list(INITS)}"),
            "model.loss": (loss in LOSSES, f"use one of {list(LOSSES)}"),
            "model.dropout": (0 <= dropout < 1, "use a probability in [0, 1)"),
            "model.hidden_size": (hidden_size >= 1, "use a positive integer"),
            "model.num_layers": (num_layers >= 1, "use a positive integer"),
            "model.scheduler_interval": (scheduler_interval in ("epoch", "step"), "use 'epoch' or 'step'"),
        }
        for key, (ok, hint) in checks.items():
            if not ok:
                raise ForecastingError(f"{key}: invalid value {locals()[key.split('.')[1]]!r}; {hint}")
        # The optimiser callables are classes, not plain data: keep them out of the checkpoint
        # so it loads with weights_only=True (config.yaml in the log dir records them).
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.net = StackedRNN(n_features, horizon, hidden_size, num_layers, dropout, cell, init, forget_bias)
        self.loss_fn = LOSSES[loss]()
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.metrics = nn.ModuleDict({"val": metrics(), "test": metrics()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Forecast made at the end of each window: (B, window, F) -> (B, H)."""
        return self.net(x)[0][:, -1]

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        out, _ = self.net(batch["x"])
        pred, y = out[:, -1], batch["y"]
        if y.dim() == 3:  # dense targets: one per time step
            loss = self.loss_fn(out, y) if self.hparams.dense_loss else self.loss_fn(pred, y[:, -1])
            y = y[:, -1]
        else:
            loss = self.loss_fn(pred, y)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True, batch_size=len(y))
        if stage != "train":
            for name, metric in self.metrics[stage].items():
                if name.endswith("_orig"):  # undo the target scaling
                    metric.update(pred * batch["y_scale"] + batch["y_loc"], y * batch["y_scale"] + batch["y_loc"])
                else:
                    metric.update(pred, y)
                self.log(f"{stage}/{name}", metric, on_epoch=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        loc, scale = batch["y_loc"], batch["y_scale"]
        return {"row": batch["row"], "forecast": self(batch["x"]) * scale + loc, "actual": batch["y"] * scale + loc}

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        scheduler = {
            "scheduler": self.lr_scheduler(optimizer),
            "interval": self.hparams.scheduler_interval,
            "monitor": self.hparams.scheduler_monitor,  # only ReduceLROnPlateau reads it
        }
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
