"""The default network: stacked LSTM (or GRU) layers and a linear head. A plain nn.Module.

forward(x, state) returns a forecast at EVERY time step plus the final state,
so the same module serves many-to-one training (use the last step), dense
training (use all steps) and truncated BPTT (feed the state back in). It follows
the network contract of contract.py; any other network that does can replace it
by `model.net.class_path` (see tcn.py for a non-recurrent one).

    hidden_sizes: 64          -> num_layers layers of 64 (today's 2 x 64)
    hidden_sizes: [64, 32]    -> LSTM(64) -> LSTM(32) -> Linear: one entry per layer
"""

import torch
from torch import nn

from forecasting.errors import ForecastingError

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
INITS = ("orthogonal", "xavier", "pytorch")


class StackedRNN(nn.Module):
    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        hidden_sizes: int | list[int] = 64,  # an int: num_layers layers of that size; a list: one per layer
        num_layers: int = 2,  # used only when hidden_sizes is an int
        dropout: float = 0.1,  # between layers (on each layer's output but the last), as nn.LSTM does
        cell: str = "lstm",
        init: str = "orthogonal",  # recurrent weights with singular values 1: gradients survive long windows
        forget_bias: float = 1.0,  # LSTM only: keeps the cell state open early in training
    ):
        super().__init__()
        sizes = [hidden_sizes] * num_layers if isinstance(hidden_sizes, int) else list(hidden_sizes)
        checks = {
            "cell": (cell in CELLS, f"use one of {list(CELLS)}"),
            "init": (init in INITS, f"use one of {list(INITS)}"),
            "dropout": (0 <= dropout < 1, "use a probability in [0, 1)"),
            "hidden_sizes": (len(sizes) > 0 and all(int(s) == s and s >= 1 for s in sizes), "use positive integers"),
            "num_layers": (num_layers >= 1, "use a positive integer"),
        }
        for key, (ok, hint) in checks.items():
            if not ok:
                value = {"hidden_sizes": hidden_sizes}.get(key, locals().get(key))
                raise ForecastingError(f"model.net.init_args.{key}: invalid value {value!r}; {hint}")
        self.cell = cell
        # One single-layer module per entry: each layer its own size, named layers.0, layers.1, ...
        self.layers = nn.ModuleList(
            CELLS[cell](size_in, size, batch_first=True) for size_in, size in zip([n_features, *sizes], sizes, strict=False)
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(sizes[-1], n_outputs)
        self.reset_parameters(init, forget_bias)

    def reset_parameters(self, init: str, forget_bias: float) -> None:
        """orthogonal: recurrent weights orthogonal (singular values 1, so a gradient
        neither explodes nor vanishes through them at initialisation), input weights
        Xavier, biases 0, LSTM forget-gate bias `forget_bias` (1 keeps the cell state
        open early in training: Jozefowicz et al. 2015). xavier: Xavier for both.
        pytorch: PyTorch's uniform(-1/sqrt(h), 1/sqrt(h)) default, untouched."""
        if init == "pytorch":
            return
        for rnn in self.layers:
            hidden = rnn.hidden_size
            for name, param in rnn.named_parameters():
                if name.startswith("weight_ih"):
                    for block in param.data.split(hidden):  # one block per gate
                        nn.init.xavier_uniform_(block)
                elif name.startswith("weight_hh"):
                    for block in param.data.split(hidden):
                        (nn.init.orthogonal_ if init == "orthogonal" else nn.init.xavier_uniform_)(block)
                elif name.startswith("bias"):
                    nn.init.zeros_(param)
                    # Gate order (i, f, g, o): the forget gate is the second block. Set it
                    # on bias_ih only, as the two biases are summed.
                    if self.cell == "lstm" and name.startswith("bias_ih"):
                        param.data[hidden : 2 * hidden] = forget_bias
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, state: list | None = None):
        """x: (batch, time, features) -> (batch, time, n_outputs), [each layer's final state]."""
        states = []
        for k, rnn in enumerate(self.layers):
            if k:
                x = self.dropout(x)
            x, s = rnn(x, None if state is None else state[k])
            states.append(s)
        return self.head(x), states
