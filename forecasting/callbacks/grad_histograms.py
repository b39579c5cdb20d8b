"""Histograms of every parameter's gradient and weights: `grad/<name>`, `weight/<name>`.

Gradients are taken BEFORE clipping (a callback's `on_before_optimizer_step` runs before
the module clips), so a histogram shows what backpropagation produced, exploding or not.
"""

import torch
from lightning.pytorch import Callback

from forecasting.callbacks.common import tensorboard, trainable


def write_histogram(writer, tag: str, values: torch.Tensor, step: int, bins: int = 64) -> None:
    """`writer.add_histogram` with the statistics computed by torch: the numpy `dot` inside it
    becomes ~10x slower when other processes compete for the cores. NaN/Inf are skipped (the
    non-finite guard reports them)."""
    v = values.detach().flatten().double().cpu()
    if not torch.isfinite(v).all():
        return
    counts, edges = torch.histogram(v, bins=bins)
    writer.add_histogram_raw(
        tag, min=float(v.min()), max=float(v.max()), num=v.numel(), sum=float(v.sum()),
        sum_squares=float((v * v).sum()), bucket_limits=edges[1:].tolist(), bucket_counts=counts.tolist(),
        global_step=step,
    )  # fmt: skip


class GradientHistograms(Callback):
    """Every `every_n_steps` optimiser steps (a truncated-BPTT chunk is a step), rank zero only,
    TensorBoardLogger only. Each costs a copy of the weights to the CPU: keep the interval coarse."""

    def __init__(self, every_n_steps: int = 100):
        self.every_n_steps = every_n_steps

    def on_train_start(self, trainer, pl_module):
        self._params = trainable(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        step = trainer.global_step
        writer = tensorboard(trainer) if step % self.every_n_steps == 0 else None
        if writer is None:
            return
        for name, param in self._params:
            if param.grad is not None:
                write_histogram(writer, f"grad/{name}", param.grad, step)
            write_histogram(writer, f"weight/{name}", param, step)
