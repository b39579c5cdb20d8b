"""Histograms of every parameter's gradient and weights: `grad/<name>`, `weight/<name>`.

Gradients are taken BEFORE clipping (a callback's `on_before_optimizer_step` runs before
the module clips), so a histogram shows what backpropagation produced, exploding or not.
"""

import torch
from lightning.pytorch import Callback

from forecasting.callbacks.common import tensorboard


class GradientHistograms(Callback):
    """Every `every_n_steps` optimiser steps (a truncated-BPTT chunk is a step), rank zero only,
    TensorBoardLogger only. A histogram costs a copy to numpy: keep the interval coarse."""

    def __init__(self, every_n_steps: int = 100):
        self.every_n_steps = every_n_steps

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        step = trainer.global_step
        writer = tensorboard(trainer) if step % self.every_n_steps == 0 else None
        if writer is None:
            return
        for name, param in pl_module.named_parameters():
            if not param.requires_grad:
                continue
            # numpy's histogram refuses NaN/Inf; the non-finite guard reports those.
            if param.grad is not None and torch.isfinite(param.grad).all():
                writer.add_histogram(f"grad/{name}", param.grad.detach().float().cpu(), step)
            if torch.isfinite(param).all():
                writer.add_histogram(f"weight/{name}", param.detach().float().cpu(), step)
