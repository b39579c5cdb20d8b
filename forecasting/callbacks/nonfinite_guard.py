"""Stop training at the first NaN/Inf in the loss, a gradient or a weight, with one clear message.

Checks, every `every_n_steps` optimiser steps / batches (default 1: every one; a larger
interval saves little and may let bad steps through before it notices):
- gradients in `on_before_optimizer_step`, i.e. before the bad update is applied;
- the loss and the weights in `on_train_batch_end` (a finite but huge update can overflow them).
It raises ForecastingError (the CLI prints it as one line and exits 2). Lightning runs
ModelCheckpoint after every other callback and saves nothing after an exception, so no
checkpoint, best or last, is written from non-finite weights. The decision is shared across
DDP ranks so that all stop together; it costs one host sync per check.

Under fp16 AMP ("16-mixed") an occasional Inf gradient is normal (the GradScaler skips that
step and lowers its scale): gradients are then not checked, only the loss and the weights.
"""

import torch
from lightning.pytorch import Callback
from torch.nn.utils import get_total_norm

from forecasting.callbacks.common import trainable
from forecasting.errors import ForecastingError

CAUSES = (
    "likely causes: a learning rate too high (lower model.optimizer.init_args.lr), unscaled inputs "
    "(data.scaler: standard), no gradient clipping (set model.gradient_clip_val, e.g. 1.0), or NaN/Inf in the data"
)


def first_nonfinite(named) -> tuple[str, str] | None:
    """(name, 'nan' / 'inf') of the first tensor holding a NaN or Inf, or None."""
    named = [(name, t.detach()) for name, t in named if t is not None]
    if not named:
        return None
    # The norm of all the tensors together is finite only if every value is: one fused (foreach) norm
    # and one host sync in the common case. Only when it is not do we look for the culprit.
    if torch.isfinite(get_total_norm([t for _, t in named])):
        return None
    for name, tensor in named:
        if not torch.isfinite(tensor).all():
            return name, "nan" if torch.isnan(tensor).any() else "inf"
    largest = max(named, key=lambda nt: float(torch.linalg.vector_norm(nt[1].double())))
    return largest[0], "so large that the norm overflows"


class NonFiniteGuard(Callback):
    def __init__(self, every_n_steps: int = 1):
        self.every_n_steps = every_n_steps
        self._steps = self._batches = 0

    def _stop(self, trainer, found: tuple[str, str] | None, what: str, when: str) -> None:
        # Every rank must take the same decision, or the others would wait forever in the next collective.
        if not trainer.strategy.reduce_boolean_decision(found is not None, all=False):
            return
        culprit = f"{what} {found[0]} is {found[1]}" if found else "a value is not finite on another process"
        raise ForecastingError(
            f"training stopped at global_step {trainer.global_step} (epoch {trainer.current_epoch}): "
            f"{culprit} {when}; {CAUSES}. Checkpoints hold only finite weights from before this point"
        )

    def on_train_start(self, trainer, pl_module):
        self._params = trainable(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._steps += 1
        if (self._steps - 1) % self.every_n_steps or trainer.precision == "16-mixed":
            return
        found = first_nonfinite((n, p.grad) for n, p in self._params)
        self._stop(trainer, found, "the gradient of", "before the update was applied")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._batches += 1
        if (self._batches - 1) % self.every_n_steps:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        loss = [("loss", loss)] if torch.is_tensor(loss) else []
        found = first_nonfinite(loss + self._params)  # one sync for both
        if found is not None and found[0] == "loss" and loss:
            what, when = "the training", "in this batch"
        else:
            what, when = "the weight", "after this batch's update"
        self._stop(trainer, found, what, when)  # once per call on every rank: the collectives must match
