"""What the diagnostic callbacks share: where they write, and a fixed validation batch.

Only rank zero writes (under DDP `logger.experiment` is a no-op elsewhere), and no
helper here makes a collective call, so rank zero may measure alone.
"""

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

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


_DRAWER: ThreadPoolExecutor | None = None
_DRAWER_LOCK = threading.Lock()


def drawer() -> ThreadPoolExecutor:
    """The one thread that draws every figure: one at a time, in the order they were asked for."""
    global _DRAWER
    with _DRAWER_LOCK:
        if _DRAWER is None:
            _DRAWER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecasting-figures")
        return _DRAWER


class DrawsFigures(Callback):
    """Figures drawn off the training loop. Rendering a figure (matplotlib, then PNG for TensorBoard)
    takes ~50 ms on a CPU and the first of a process ~0.25 s more (fonts), all of it time the next
    epoch's steps would wait for. `draw_later(render, ...)` hands it to one worker thread (matplotlib's
    object API, one figure at a time) and training goes on; the data drawn is computed before, in the
    loop, so a figure shows the model at the step it names. Every figure is written before `fit`,
    `validate` or `test` returns (Lightning calls `teardown` after each, before the loggers close),
    and a drawing error is raised there.
    """

    def draw_later(self, render: Callable[..., None], *args) -> None:
        self.__dict__.setdefault("_drawing", []).append(drawer().submit(render, *args))

    def finish_drawing(self, raise_errors: bool = True) -> None:
        pending: list[Future] = self.__dict__.pop("_drawing", [])
        errors = [f.exception() for f in pending]  # waits for each
        first = next((e for e in errors if e is not None), None)
        if first is not None and raise_errors:
            raise first

    def on_exception(self, trainer, pl_module, exception):
        self.finish_drawing(raise_errors=False)  # the run's own exception is the one to show

    def teardown(self, trainer, pl_module, stage):
        self.finish_drawing()


class FixedBatchCallback(DrawsFigures):
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
