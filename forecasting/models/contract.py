"""The network contract: what any network chosen by `model.net` must do, checked in one place.

    net = NetClass(n_features, n_outputs, **init_args)   # built by the Forecaster
    outputs, state = net(x, state=None)                   # x: (B, T, F) -> outputs: (B, T, n_outputs)

`state` is whatever the network carries from one call to the next (a tensor, or any
nesting of tuples/lists/dicts of tensors); the template never looks inside it, it only
detaches it between truncated-BPTT chunks. A network without state returns `None`
(or just the outputs tensor): it trains with full BPTT, and truncated BPTT refuses it.
The sizes are linked from the data by the CLI; everything else is `model.net.init_args`.
"""

import functools
import importlib
import inspect
from collections.abc import Callable

import torch
from torch import nn

from forecasting.errors import ForecastingError

# `model.net` in YAML: a class_path and init_args; the Forecaster calls it with the two sizes.
NetworkCallable = Callable[[int, int], nn.Module]
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)


def call(net: nn.Module, x: torch.Tensor, state=None):
    """(outputs, state) from any network that follows the contract (a bare tensor means no state)."""
    result = net(x) if state is None else net(x, state)
    if isinstance(result, torch.Tensor):
        return result, None
    return result[0], result[1]


def detach(state):
    """Detach every tensor in a nested state (truncated BPTT: no gradient into the previous chunk)."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(detach(s) for s in state)
    if isinstance(state, dict):
        return {k: detach(v) for k, v in state.items()}
    return state


def net_class(net) -> type:
    """The class a `model.net` value builds: the class itself, or jsonargparse's partial of it."""
    while isinstance(net, functools.partial):
        net = next((a for a in reversed(net.args) if inspect.isclass(a)), net.func)
    return net


def from_dict(net):
    """A network described as plain data (a checkpoint's hyperparameters) back to a callable."""
    if isinstance(net, dict):
        module, _, name = net["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return functools.partial(cls, **net.get("init_args", {}))
    return net


def describe(net) -> dict:
    """`model.net` as plain data (class_path and every init arg, defaults included): stored in the
    checkpoint's hyperparameters, so a checkpoint can be compared with the config that loads it."""
    net = from_dict(net)
    cls = net_class(net)
    args = dict(net.keywords) if isinstance(net, functools.partial) else {}
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, n_features, n_outputs
    for p in params:
        if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD:
            args.setdefault(p.name, p.default)
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": plain}


def takes(net, key: str) -> bool:
    """Whether the network's class has an init argument `key` (diagnose names only keys that exist)."""
    return key in inspect.signature(net_class(from_dict(net)).__init__).parameters


def build(net, n_features: int, n_outputs: int, tbptt: bool) -> nn.Module:
    """Build the network and check the contract on a tiny input, so a broken network is one line
    at start-up instead of a shape error mid-training."""
    net = from_dict(net)
    name = describe(net)["class_path"]
    module = net(n_features, n_outputs)
    if not isinstance(module, nn.Module):
        raise ForecastingError(f"model.net: {name} built a {type(module).__name__}, not a torch.nn.Module")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out, state = call(module, torch.zeros(2, 3, n_features))
    except Exception as err:  # a user's network: any failure here is a contract problem, say which
        raise ForecastingError(
            f"model.net: {name} failed on a (batch 2, time 3, features {n_features}) input: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; it must map (B, T, F) to (B, T, outputs)"
        ) from None
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 3, n_outputs):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ForecastingError(
            f"model.net: {name} returned outputs of shape {shape} for input (2, 3, {n_features}); "
            f"the contract is (B, T, F) -> (B, T, {n_outputs}): an output at every time step"
        )
    if tbptt and state is None:
        raise ForecastingError(
            f"model.tbptt_steps: {name} returns no state, so truncated BPTT has nothing to carry between chunks; "
            "set model.tbptt_steps: null (full BPTT) or use a recurrent network"
        )
    return module


def recurrent_layers(net: nn.Module) -> list[tuple[str, nn.RNNBase]]:
    """(path, module) of every LSTM/GRU/RNN inside the network, wherever it sits."""
    return [(name or "net", m) for name, m in net.named_modules() if isinstance(m, RECURRENT)]

