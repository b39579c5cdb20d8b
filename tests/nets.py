"""Networks for tests: the default one with other settings, and two a user might write
(a network of their own lives outside forecasting/, chosen by class_path in YAML)."""

import functools

import torch
from torch import nn

from forecasting.models.lstm import StackedRNN


def lstm(**kwargs):
    """`model.net` as the CLI builds it: StackedRNN with these init args."""
    return functools.partial(StackedRNN, **kwargs)


class SeedLSTM(nn.Module):
    """LSTM(64) -> LSTM(32) -> Linear as a user writes it: layers in a ModuleList, state a LIST."""

    def __init__(self, n_features: int, n_outputs: int, sizes: list[int] = (16, 8)):
        super().__init__()
        sizes = [n_features, *sizes]
        self.layers = nn.ModuleList(nn.LSTM(a, b, batch_first=True) for a, b in zip(sizes, sizes[1:], strict=False))
        self.out = nn.Linear(sizes[-1], n_outputs)

    def forward(self, x, state=None):
        state = state or [None] * len(self.layers)
        new = []
        for layer, s in zip(self.layers, state, strict=True):
            x, s = layer(x, s)
            new.append(list(s))  # a list of lists: the template must not care
        return self.out(x), new


class TinyTransformer(nn.Module):
    """A causal Transformer encoder that returns only its outputs (no state at all)."""

    def __init__(self, n_features: int, n_outputs: int, width: int = 16, heads: int = 2):
        super().__init__()
        self.embed = nn.Linear(n_features, width)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, x, state=None):
        t = x.shape[1]
        mask = torch.triu(torch.full((t, t), float("-inf"), device=x.device), diagonal=1)
        return self.head(self.encoder(self.embed(x), mask=mask, is_causal=True))


class Float32Only(StackedRNN):
    """The default network, except that it fails under autocast, as an LSTM does on a CPU whose oneDNN
    has no bfloat16 kernel (the failure check_precision turns into one line before anything is written)."""

    def forward(self, x, state=None):
        if torch.is_autocast_enabled("cpu") or x.dtype != torch.float32:
            raise RuntimeError("could not create a primitive descriptor for the LSTM forward propagation primitive")
        return super().forward(x, state)
