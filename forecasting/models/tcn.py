"""A small temporal convolution network (Bai, Kolter & Koltun 2018): the non-recurrent
reference network, and a worked example of the network contract (contract.py).

Causal dilated 1-D convolutions: the output at step t sees inputs t-r+1..t only, where
the receptive field r = 1 + (kernel_size - 1) * (2^levels - 1) * 2 (two convolutions per
level, dilation doubling per level). No state: it trains with full BPTT only.
Use it to ask "is it the LSTM or the data?":

    python -m forecasting fit --config configs/volatility.yaml --config configs/tcn.yaml
"""

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class CausalBlock(nn.Module):
    """Two causal convolutions with a residual connection."""

    def __init__(self, size_in: int, size: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.pad = (kernel_size - 1) * dilation  # left padding only: no step sees the future
        self.conv1 = weight_norm(nn.Conv1d(size_in, size, kernel_size, dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(size, size, kernel_size, dilation=dilation))
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv1d(size_in, size, 1) if size_in != size else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        out = self.dropout(torch.relu(self.conv1(nn.functional.pad(x, (self.pad, 0)))))
        out = self.dropout(torch.relu(self.conv2(nn.functional.pad(out, (self.pad, 0)))))
        return torch.relu(out + self.skip(x))


class TCN(nn.Module):
    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        channels: int = 32,
        levels: int = 4,  # receptive field 1 + 2 * (kernel_size - 1) * (2^levels - 1) = 61 steps
        kernel_size: int = 3,
        dropout: float = 0.1,
    ):
        super().__init__()
        sizes = [n_features] + [channels] * levels
        self.blocks = nn.Sequential(
            *(CausalBlock(sizes[i], sizes[i + 1], kernel_size, 2**i, dropout) for i in range(levels))
        )
        self.head = nn.Linear(channels, n_outputs)

    def forward(self, x: torch.Tensor, state=None):
        """x: (batch, time, features) -> (batch, time, n_outputs), None (no state)."""
        out = self.blocks(x.transpose(1, 2)).transpose(1, 2)
        return self.head(out), None
