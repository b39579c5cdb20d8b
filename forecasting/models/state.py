"""A network's carried state, lane by lane: what stream mode needs beyond the network contract.

The contract (contract.py) leaves the state opaque: any nesting of tensors. Stream mode keeps
one state per stream ("lane") of a batch and must zero some lanes (a new series starts there)
while keeping the others, so it needs each tensor's batch dimension. `batch_dims` finds it by
calling the network on batches of 2 and 3 sequences and seeing which dimension follows (an
LSTM's state is (layers, batch, hidden) even with batch_first=True; a user's may differ).
"""

import torch
from torch import nn

from forecasting.errors import ForecastingError
from forecasting.models import contract


def leaves(state) -> list[torch.Tensor]:
    """The tensors of a nested state, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in leaves(s)]
    if isinstance(state, dict):
        return [t for k in sorted(state) for t in leaves(state[k])]
    return []


def rebuild(state, tensors):
    """`state`'s nesting with its tensors replaced, in `leaves` order (an iterator is consumed)."""
    tensors = iter(tensors)

    def walk(s):
        if isinstance(s, torch.Tensor):
            return next(tensors)
        if isinstance(s, (tuple, list)):
            return type(s)(walk(v) for v in s)
        if isinstance(s, dict):
            walked = {k: walk(s[k]) for k in sorted(s)}  # the order `leaves` used
            return {k: walked[k] for k in s}
        return s

    return walk(state)


def batch_dims(net: nn.Module, n_features: int) -> list[int]:
    """The batch dimension of every state tensor (in `leaves` order)."""
    was_training = net.training
    device = next((p.device for p in net.parameters()), torch.device("cpu"))  # the probe runs where the net is
    net.eval()
    try:
        with torch.no_grad():
            two = leaves(contract.call(net, torch.zeros(2, 1, n_features, device=device))[1])
            three = leaves(contract.call(net, torch.zeros(3, 1, n_features, device=device))[1])
    finally:
        net.train(was_training)
    dims = []
    for a, b in zip(two, three, strict=True):
        differ = [d for d in range(a.dim()) if a.shape[d] != b.shape[d]]
        if len(differ) != 1 or (a.shape[differ[0]], b.shape[differ[0]]) != (2, 3):
            raise ForecastingError(
                f"data.mode: stream needs a state whose tensors have one batch dimension; {type(net).__name__} "
                f"returned state shapes {tuple(a.shape)} (batch 2) and {tuple(b.shape)} (batch 3)"
            )
        dims.append(differ[0])
    return dims


def keep_lanes(state, keep: torch.Tensor, dims: list[int]):
    """The state with lanes where `keep` is False set to zeros (an nn.LSTM's own start state)."""
    out = []
    for tensor, dim in zip(leaves(state), dims, strict=True):
        shape = [1] * tensor.dim()
        shape[dim] = -1
        out.append(tensor * keep.to(tensor.dtype).view(shape))
    return rebuild(state, out)


def select_lanes(state, index: torch.Tensor, dims: list[int]):
    """The state of lanes `index` only (the streaming API keeps one lane per ticker)."""
    return rebuild(state, [t.index_select(d, index) for t, d in zip(leaves(state), dims, strict=True)])


def cat_lanes(states: list, dims: list[int]):
    """Concatenate per-lane states along their batch dimensions."""
    columns = zip(*(leaves(s) for s in states), strict=True)
    return rebuild(states[0], [torch.cat(list(c), dim=d) for c, d in zip(columns, dims, strict=True)])
