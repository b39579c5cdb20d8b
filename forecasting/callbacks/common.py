"""What the diagnostic callbacks share: where they write, and a fixed validation batch.

Only rank zero writes (under DDP `logger.experiment` is a no-op elsewhere), and no
helper here makes a collective call, so rank zero may measure alone.
"""

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from forecasting.data import stream


def tensorboard(trainer: Trainer):
    """The SummaryWriter of the first TensorBoardLogger, on rank zero; None otherwise."""
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def trainable(pl_module: LightningModule) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of every trainable parameter. Callbacks take this list once in
    `on_train_start`: named_parameters() walks every submodule (metrics too) and would cost
    more than the per-step checks themselves."""
    return [(name, p) for name, p in pl_module.named_parameters() if p.requires_grad]


def log_scalars(trainer: Trainer, metrics: dict[str, float]) -> None:
    """Log straight to every logger at the current optimiser step. Unlike `self.log`, this is not
    thinned by `log_every_n_steps`, so each callback's own interval decides."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


class FixedBatchCallback(Callback):
    """Measures something on the first validation batch, kept for the whole run so that values are
    comparable over time: at the end of every validation epoch (`every_n_steps: null`, the
    default; includes the sanity check, i.e. the untrained model) or every N optimiser steps
    once a validation batch has been seen. Measured in eval mode (no dropout), rank zero only.

    max_samples: windows of that batch used (bounds the cost).
    """

    def __init__(self, every_n_steps: int | None = None, max_samples: int = 64):
        self.every_n_steps, self.max_samples = every_n_steps, max_samples
        self.batch: dict | None = None
        self._next_step = every_n_steps or 0

    def measure(self, trainer: Trainer, pl_module: LightningModule, batch: dict) -> None:
        raise NotImplementedError

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.batch is None and batch_idx == 0 and dataloader_idx == 0 and trainer.is_global_zero:
            # Batches made inside validation are inference tensors, unusable by autograd: clone.
            if "at" in batch:  # stream mode: whole series; measure on windows ending at scored steps
                batch = stream.as_windows(batch, getattr(trainer.datamodule, "window", 64), self.max_samples)
            with torch.inference_mode(False):
                self.batch = {k: v[: self.max_samples].clone() for k, v in batch.items() if torch.is_tensor(v)}

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.every_n_steps is None:
            self._run(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # A batch may hold several optimiser steps (truncated BPTT): test for crossing a multiple.
        if self.every_n_steps and trainer.global_step >= self._next_step:
            self._next_step = (trainer.global_step // self.every_n_steps + 1) * self.every_n_steps
            self._run(trainer, pl_module)

    def _run(self, trainer, pl_module):
        if self.batch is None or not trainer.is_global_zero:
            return
        modes = {module: module.training for module in pl_module.modules()}  # restored one by one
        pl_module.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                self.measure(trainer, pl_module, self.batch)
        finally:
            for module, training in modes.items():
                module.training = training
