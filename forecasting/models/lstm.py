"""The whole network: a stacked LSTM (or GRU) and a linear head. A plain nn.Module.

forward(x, state) returns a forecast at EVERY time step plus the final state,
so the same module serves many-to-one training (use the last step), dense
training (use all steps) and truncated BPTT (feed the state back in).
"""

import torch
from torch import nn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
INITS = ("orthogonal", "xavier", "pytorch")


class StackedRNN(nn.Module):
    def __init__(
        self,
        n_features: int,
        horizon: int = 1,
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.1,
        cell: str = "lstm",
        init: str = "orthogonal",
        forget_bias: float = 1.0,
    ):
        super().__init__()
        self.cell = cell
        # nn.LSTM applies dropout between layers only; with one layer it would only warn.
        self.rnn = CELLS[cell](
            n_features, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.head = nn.Linear(hidden_size, horizon)
        self.reset_parameters(init, forget_bias)

    def reset_parameters(self, init: str, forget_bias: float) -> None:
        """orthogonal: recurrent weights orthogonal (singular values 1, so a gradient
        neither explodes nor vanishes through them at initialisation), input weights
        Xavier, biases 0, LSTM forget-gate bias `forget_bias` (1 keeps the cell state
        open early in training: Jozefowicz et al. 2015). xavier: Xavier for both.
        pytorch: PyTorch's uniform(-1/sqrt(h), 1/sqrt(h)) default, untouched."""
        if init == "pytorch":
            return
        hidden = self.rnn.hidden_size
        for name, param in self.rnn.named_parameters():
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

    def forward(self, x: torch.Tensor, state=None):
        """x: (batch, time, features) -> (batch, time, horizon), final state."""
        out, state = self.rnn(x, state)
        return self.head(out), state
