"""LSTM gate saturation on a fixed validation batch.

A gate activation below 0.05 or above 0.95 sits on a flat part of the sigmoid: its own
gradient is nearly zero, and a forget gate near 0 also cuts the gradient through the cell
state. Logged for every nn.LSTM layer found in the network (wherever it sits; GRU and
non-recurrent layers have no such gates and log nothing here):
  gates/forget_saturated, gates/input_saturated   share of activations < 0.05 or > 0.95, all layers
  gates/<layer>_forget_saturated, gates/<layer>_input_saturated   the same per layer (layers.0, ...)
  gates/forget_mean    near 1: long memory (the intended state); near 0: the cell state is wiped each step
"""

import torch
from torch import nn

from forecasting.callbacks.common import FixedBatchCallback, log_scalars
from forecasting.models import contract

LOW, HIGH = 0.05, 0.95


@torch.no_grad()
def lstm_gates(
    lstm: nn.LSTM, x: torch.Tensor, output: torch.Tensor | None = None
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Input and forget gate activations of a batch_first nn.LSTM, which its fused kernel hides.

    Each layer's hidden states come from PyTorch's own kernel (a one-layer LSTM borrowing that
    layer's weights); the gates of all steps are then recomputed at once from each step's input
    and previous hidden state. Returns [(input gate, forget gate)] per layer, each (B, T, H),
    and the last layer's outputs (equal to `lstm(x)[0]` in eval mode). `output`: what a one-layer
    `lstm(x)` returned from a zero state, if known (its hidden states: nothing to run again)."""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if lstm.bias else ("weight_ih", "weight_hh")
    gates, seq = [], x
    for layer in range(lstm.num_layers):
        # Copies: on CUDA the borrowing LSTM re-packs the weights it is given into its own buffer.
        w = {name: getattr(lstm, f"{name}_l{layer}").clone() for name in names}
        if output is not None and lstm.num_layers == 1:
            out = output
        else:
            single = nn.LSTM(seq.shape[-1], lstm.hidden_size, bias=lstm.bias, batch_first=True, device="meta")
            out, _ = torch.func.functional_call(single, {f"{name}_l0": v for name, v in w.items()}, (seq,))
        h_prev = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)
        pre = seq @ w["weight_ih"].T + h_prev @ w["weight_hh"].T + (w["bias_ih"] + w["bias_hh"] if lstm.bias else 0)
        i, f, _, _ = pre.chunk(4, dim=-1)  # PyTorch's gate order: input, forget, cell, output
        gates.append((i.sigmoid(), f.sigmoid()))
        seq = out
    return gates, seq


@torch.no_grad()
def network_gates(net: nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (input gate, forget gate)} of every LSTM layer in any network, on input x: one
    forward pass records what each LSTM receives and returns, then its gates are recomputed from
    that (a one-layer LSTM's own output gives its hidden states; a stacked one is run layer by layer)."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def record(path):
        def hook(module, args, output):  # returns None: the output is left as it is
            # From a zero state (no state passed) the output holds the hidden states the gates need.
            zero_state = len(args) < 2 or args[1] is None
            seen.setdefault(path, (args[0], output[0] if zero_state else None))

        return hook

    hooks = []
    for path, module in contract.recurrent_layers(net):
        usable = isinstance(module, nn.LSTM) and module.batch_first and not module.bidirectional
        if usable and not module.proj_size:
            hooks.append(module.register_forward_hook(record(path)))
    try:
        contract.call(net, x)
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(net.named_modules())
    gates = {}
    for path, (inputs, output) in seen.items():
        lstm = modules[path] if path in modules else net  # recurrent_layers names the root 'net'
        if not isinstance(inputs, torch.Tensor):
            continue
        for k, pair in enumerate(lstm_gates(lstm, inputs, output)[0]):
            gates[path + (f"_l{k}" if lstm.num_layers > 1 else "")] = pair
    return gates


def saturated(a: torch.Tensor) -> float:
    return float(((a < LOW) | (a > HIGH)).float().mean())


class GateSaturation(FixedBatchCallback):
    """See the module docstring; interval and batch as in FixedBatchCallback."""

    def measure(self, trainer, pl_module, batch):
        net = getattr(pl_module, "net", None)
        gates = network_gates(net, batch["x"]) if isinstance(net, nn.Module) else {}
        if not gates:
            return
        inputs = torch.cat([i.flatten() for i, _ in gates.values()])
        forgets = torch.cat([f.flatten() for _, f in gates.values()])
        metrics = {
            "gates/input_saturated": saturated(inputs),
            "gates/forget_saturated": saturated(forgets),
            "gates/forget_mean": float(forgets.mean()),
        }
        for layer, (i, f) in gates.items():
            metrics[f"gates/{layer}_input_saturated"] = saturated(i)
            metrics[f"gates/{layer}_forget_saturated"] = saturated(f)
        log_scalars(trainer, metrics)
