"""Gradient flow over time, the vanishing-gradient measurement.

On a fixed validation batch: the norm of the gradient of the loss (forecast at the last step)
with respect to the input at each time step, ||dL/dx_t|| over the batch and features. Input
t reaches the forecast through T-1-t recurrent steps, so the curve from the last step back
to the first shows how much signal backpropagation carries across the window.

  grad_flow/first_to_last        ||dL/dx_0|| / ||dL/dx_{T-1}||; 1e-8 means the start of the window
                                 cannot teach the model anything
  grad_flow/log10_first_to_last  the same in decades (readable on a linear axis)
  grad_flow/per_step             figure: log10 of the norms against steps back from the last, on every
                                 `figure_every_n`-th measurement
"""

import contextlib
import math

import numpy as np
import torch
from torch import nn

from forecasting.callbacks.common import FixedBatchCallback, log_scalars, tensorboard
from forecasting.models import contract


def gradient_flow(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=None) -> torch.Tensor:
    """Norm of dL/dx_t for each t = 0..T-1 (first to last), for any `net(x) -> (outputs per step, state)`."""
    loss_fn = loss_fn or nn.MSELoss()
    x = x.detach().clone().requires_grad_(True)
    with rnns_in_train_mode_without_dropout(net):
        out, _ = contract.call(net, x)
        target = y[:, -1] if y.dim() == 3 else y  # dense targets: the last step's
        (grad,) = torch.autograd.grad(loss_fn(out[:, -1], target), x)
    return torch.linalg.vector_norm(grad, dim=(0, 2))


@contextlib.contextmanager
def rnns_in_train_mode_without_dropout(net: nn.Module):
    """cuDNN runs an RNN's backward only in training mode: in eval mode it refuses, and PyTorch's
    native kernels took 13x longer on an H100 (23 ms against 1.8 ms, 2 x 64 LSTM, window 64). An RNN
    module differs between the modes only by its dropout between layers, so: training mode with
    that dropout set to 0. Other modules keep their mode."""
    rnns = [(m, m.training, m.dropout) for m in net.modules() if isinstance(m, nn.RNNBase)]
    try:
        for module, _, _ in rnns:
            module.train()
            module.dropout = 0.0
        yield
    finally:
        for module, training, dropout in rnns:
            module.train(training)
            module.dropout = dropout


class GradientFlow(FixedBatchCallback):
    """See the module docstring; interval and batch as in FixedBatchCallback. Needs `pl_module.net`.

    figure_every_n: draw the figure on the 0th, N-th, 2N-th, ... measurement (the 0th is the untrained
    model at the sanity check); the scalars are logged on every one. A figure costs tens of ms per
    validation on a CPU, more than the measurement itself (BENCHMARKS.md), and is drawn by a worker
    thread while training goes on (DrawsFigures); 1 draws every time.
    """

    def __init__(self, every_n_steps: int | None = None, max_samples: int = 64, figure_every_n: int = 5):
        super().__init__(every_n_steps, max_samples)
        self.figure_every_n, self._measured = figure_every_n, 0

    def measure(self, trainer, pl_module, batch):
        if not isinstance(getattr(pl_module, "net", None), nn.Module):
            return
        draw = self._measured % self.figure_every_n == 0
        self._measured += 1
        norms = gradient_flow(pl_module.net, batch["x"], batch["y"], getattr(pl_module, "output_loss", None))
        norms = norms.double().cpu()
        ratio = float(norms[0] / norms[-1].clamp(min=1e-300))
        log10 = math.log10(max(ratio, 1e-300))
        log_scalars(trainer, {"grad_flow/first_to_last": ratio, "grad_flow/log10_first_to_last": log10})
        writer = tensorboard(trainer)
        if writer is not None and draw:
            self.draw_later(draw_gradient_flow, writer, norms.numpy(), ratio, trainer.global_step)


def draw_gradient_flow(writer, norms: np.ndarray, ratio: float, step: int) -> None:
    from matplotlib.figure import Figure  # imported when first drawn: runs without figures never pay for it

    fig = Figure(figsize=(6, 3.5))  # no layout engine: it would double the drawing time
    fig.subplots_adjust(left=0.14, right=0.97, top=0.9, bottom=0.14)
    ax = fig.add_subplot()
    # log10 values on a linear axis: a log axis draws its tick labels with mathtext, 3x slower
    ax.plot(range(len(norms)), np.log10(np.maximum(norms[::-1], 1e-300)))
    ax.set_xlabel("steps back from the last input")
    ax.set_ylabel("log10 ||dL/dx_t||")
    ax.set_title(f"gradient flow at step {step}: first/last = {ratio:.2g}")
    writer.add_figure("grad_flow/per_step", fig, step)
