"""Gradient norms, the place where exploding gradients show up as spikes.

Logged every `every_n_steps` optimiser steps (a truncated-BPTT chunk is a step):
  grad_norm/total_pre_clip    L2 norm of all gradients as backpropagation produced them
  grad_norm/total_post_clip   the same after clipping, derived from the clip settings: min(pre, clip_val)
                              for 'norm' (what Lightning's clip leaves, to 1e-6), the norm of the clamped
                              gradients for 'value'; equal to pre when clipping is off
  grad_norm/max_pre_clip      the largest pre-clip norm of the interval: a spike between two logged steps shows
  grad_norm/clip_fraction     share of the interval's steps on which clipping changed the gradients
  grad_norm/<layer>_input_to_hidden, grad_norm/<layer>_hidden_to_hidden   pre-clip, each recurrent layer
  grad_norm/<module>                   pre-clip, every other module with parameters (e.g. head)
  grad_norm/<layer>_{ih,hh}_{input,forget,cell,output}_gate   LSTM layers only: each gate's block
<layer> is the recurrent module's path in the network (layers.0, layers.1 for the default
StackedRNN), plus _l<k> for layer k of a multi-layer nn.LSTM/GRU: layers are found wherever
they sit in any network (named_modules), and two layers never share a tag.
The total norm is computed on every step (one fused norm, no host sync) so that the fraction and
the maximum cover the whole interval; the per-layer and per-gate norms only on logging steps.
"""

import re

import torch
from lightning.pytorch import Callback
from torch.nn.utils import get_total_norm

from forecasting.callbacks.common import log_scalars, trainable
from forecasting.models.contract import RECURRENT

RNN_PARAM = re.compile(r"(weight|bias)_(ih|hh)_l(\d+)(_reverse)?$")


def param_groups(pl_module) -> dict[str, tuple[str, bool]]:
    """Parameter name -> (tag, is an LSTM weight), e.g. 'net.layers.1.weight_hh_l0' ->
    ('layers.1_hidden_to_hidden', True), 'net.head.bias' -> ('head', False)."""
    owners = {}
    for path, module in pl_module.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            owners[f"{path}.{pname}" if path else pname] = (path, module, pname)
    groups = {}
    for name, (path, module, pname) in owners.items():
        short = path.removeprefix("net.") if path != "net" else "net"
        match = RNN_PARAM.fullmatch(pname) if isinstance(module, RECURRENT) else None
        if match:
            layer = short + (f"_l{match[3]}" if module.num_layers > 1 else "") + (match[4] or "")
            kind = "input" if match[2] == "ih" else "hidden"
            groups[name] = (f"{layer}_{kind}_to_hidden", isinstance(module, torch.nn.LSTM) and match[1] == "weight")
        else:
            groups[name] = (short or name, False)
    return groups


def clip_settings(trainer, pl_module) -> tuple[float | None, str]:
    """The module's clipping keys (both BPTT modes), else the Trainer's (full BPTT only)."""
    hparams = getattr(pl_module, "hparams", {})
    if hparams.get("gradient_clip_val") is not None:
        return hparams["gradient_clip_val"], hparams.get("gradient_clip_algorithm", "norm")
    return trainer.gradient_clip_val or None, "value" if trainer.gradient_clip_algorithm == "value" else "norm"


LSTM_GATES = ("input", "forget", "cell", "output")  # PyTorch's order of the four row blocks


def gate_norms(grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """Norms of the four gate blocks of an LSTM weight's gradient (rows i, f, g, o): a dead forget
    gate shows as a forget norm near zero. Their squares sum to the whole gradient's squared norm."""
    return {
        gate: torch.linalg.vector_norm(block.float()) for gate, block in zip(LSTM_GATES, grad.chunk(4), strict=True)
    }


class GradientNorms(Callback):
    def __init__(self, every_n_steps: int = 10):
        self.every_n_steps = every_n_steps
        self._reset()

    def _reset(self):
        self._steps, self._clipped, self._max = 0, 0.0, 0.0

    def on_train_start(self, trainer, pl_module):
        self._params = trainable(pl_module)
        self._groups = param_groups(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        named = [(n, p.grad.detach()) for n, p in self._params if p.grad is not None]
        if not named:
            return
        grads = [g for _, g in named]
        total = get_total_norm(grads)  # one fused (foreach) norm; per-parameter norms only when logging
        clip_val, algorithm = clip_settings(trainer, pl_module)
        if clip_val is None:
            clipped = torch.zeros((), device=total.device)
        elif algorithm == "value":
            clipped = (torch.stack([g.abs().max() for g in grads]).max() > clip_val).float()
        else:
            clipped = (total > clip_val).float()
        # Accumulate as tensors: no device-to-host sync except on the logging step.
        self._steps += 1
        self._clipped = self._clipped + clipped
        self._max = total if self._steps == 1 else torch.maximum(self._max, total)
        if self._steps < self.every_n_steps:
            return
        if clip_val is None:
            post = total
        elif algorithm == "value":
            post = get_total_norm([g.clamp(-clip_val, clip_val) for g in grads])
        else:
            post = total.clamp(max=clip_val)
        norms = [torch.linalg.vector_norm(g.float()) for g in grads]
        metrics = {
            "grad_norm/total_pre_clip": total,
            "grad_norm/total_post_clip": post,
            "grad_norm/max_pre_clip": self._max,
            "grad_norm/clip_fraction": self._clipped / self._steps,
        }
        groups: dict[str, list[torch.Tensor]] = {}
        for (name, _), norm in zip(named, norms, strict=True):
            groups.setdefault(self._groups[name][0], []).append(norm)
        for layer, layer_norms in groups.items():
            metrics[f"grad_norm/{layer}"] = torch.linalg.vector_norm(torch.stack(layer_norms))
        for name, grad in named:  # gate-level norms of LSTM weights, pre-clip, per layer and weight (ih / hh)
            tag, lstm_weight = self._groups[name]
            if lstm_weight:
                layer, kind = tag.removesuffix("_input_to_hidden").removesuffix("_hidden_to_hidden"), tag
                weight = "ih" if kind.endswith("_input_to_hidden") else "hh"
                for gate, norm in gate_norms(grad).items():
                    metrics[f"grad_norm/{layer}_{weight}_{gate}_gate"] = norm
        values = torch.stack([v.float() for v in metrics.values()]).tolist()  # one host sync, not one per value
        log_scalars(trainer, dict(zip(metrics, values, strict=True)))
        self._reset()
