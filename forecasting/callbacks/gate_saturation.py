"""LSTM gate saturation on a fixed validation batch.

A gate activation below 0.05 or above 0.95 sits on a flat part of the sigmoid: its own
gradient is nearly zero, and a forget gate near 0 also cuts the gradient through the cell
state. Logged (LSTM only; other cells are skipped):
  gates/forget_saturated, gates/input_saturated   share of activations < 0.05 or > 0.95, all layers
  gates/l<k>_forget_saturated, gates/l<k>_input_saturated   the same per layer
  gates/forget_mean    near 1: long memory (the intended state); near 0: the cell state is wiped each step
"""

import torch
from torch import nn

from forecasting.callbacks.common import FixedBatchCallback, log_scalars

LOW, HIGH = 0.05, 0.95


@torch.no_grad()
def lstm_gates(lstm: nn.LSTM, x: torch.Tensor) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Input and forget gate activations of a batch_first nn.LSTM, which its fused kernel hides.

    Each layer's hidden states come from PyTorch's own kernel (a one-layer LSTM borrowing that
    layer's weights); the gates of all steps are then recomputed at once from each step's input
    and previous hidden state. Returns [(input gate, forget gate)] per layer, each (B, T, H),
    and the last layer's outputs (equal to `lstm(x)[0]` in eval mode)."""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if lstm.bias else ("weight_ih", "weight_hh")
    gates, seq = [], x
    for layer in range(lstm.num_layers):
        # Copies: on CUDA the borrowing LSTM re-packs the weights it is given into its own buffer.
        w = {name: getattr(lstm, f"{name}_l{layer}").clone() for name in names}
        single = nn.LSTM(seq.shape[-1], lstm.hidden_size, bias=lstm.bias, batch_first=True, device="meta")
        out, _ = torch.func.functional_call(single, {f"{name}_l0": v for name, v in w.items()}, (seq,))
        h_prev = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)
        pre = seq @ w["weight_ih"].T + h_prev @ w["weight_hh"].T + (w["bias_ih"] + w["bias_hh"] if lstm.bias else 0)
        i, f, _, _ = pre.chunk(4, dim=-1)  # PyTorch's gate order: input, forget, cell, output
        gates.append((i.sigmoid(), f.sigmoid()))
        seq = out
    return gates, seq


def saturated(a: torch.Tensor) -> float:
    return float(((a < LOW) | (a > HIGH)).float().mean())


class GateSaturation(FixedBatchCallback):
    """See the module docstring; interval and batch as in FixedBatchCallback."""

    def measure(self, trainer, pl_module, batch):
        rnn = getattr(getattr(pl_module, "net", None), "rnn", None)
        if not isinstance(rnn, nn.LSTM) or rnn.bidirectional or rnn.proj_size or not rnn.batch_first:
            return
        gates, _ = lstm_gates(rnn, batch["x"])
        metrics = {
            "gates/input_saturated": saturated(torch.stack([i for i, _ in gates])),
            "gates/forget_saturated": saturated(torch.stack([f for _, f in gates])),
            "gates/forget_mean": float(torch.stack([f for _, f in gates]).mean()),
        }
        for layer, (i, f) in enumerate(gates):
            metrics[f"gates/l{layer}_input_saturated"] = saturated(i)
            metrics[f"gates/l{layer}_forget_saturated"] = saturated(f)
        log_scalars(trainer, metrics)
