"""Output heads: what the network's outputs mean, and the loss that trains them (`model.head`).

The network contract does not change: a network built with `n_outputs = horizon * head.n_params`
maps (B, T, F) to (B, T, n_outputs); the head turns that into parameters (B, T, horizon, n_params):

    point      1: the forecast itself; model.loss (mse / mae / huber). Today's behaviour.
    gaussian   2: loc, scale; Gaussian negative log-likelihood.
    student_t  3: loc, scale, df; Student-t negative log-likelihood (fat tails, df > 2).
    quantiles  K: one value per level of model.quantiles; pinball loss averaged over the levels.

Scales go through softplus plus a floor (`model.min_scale`, scaled units): the likelihood cannot
reach -inf by shrinking a scale to zero on a quiet window. Quantiles are a base value plus
cumulative softplus increments, so they never cross, by construction rather than by penalty.
Every head's parameters are in the data module's scaled units; `to_original` undoes the scaling
(y = y_scaled * scale + loc) for each of them.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from forecasting.errors import ForecastingError

HEADS = ("point", "gaussian", "student_t", "quantiles")
DEFAULT_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)  # VaR levels, both 50% and 90% bands, the median
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class PointHead(nn.Module):
    family, n_params, names = "point", 1, ("forecast",)

    def __init__(self, loss_fn: nn.Module):
        super().__init__()
        self.loss_fn = loss_fn

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        return out.unsqueeze(-1)

    def point(self, params: torch.Tensor) -> torch.Tensor:
        return params[..., 0]

    def loss(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(params[..., 0], y)

    def to_original(self, params: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """loc, scale: (B, 1), the data module's target scaling."""
        return params * scale[..., None] + loc[..., None]


class GaussianHead(nn.Module):
    family, n_params, names = "gaussian", 2, ("loc", "scale")

    def __init__(self, min_scale: float):
        super().__init__()
        self.min_scale = min_scale

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        raw = out.unflatten(-1, (-1, self.n_params))
        return torch.cat([raw[..., :1], F.softplus(raw[..., 1:2]) + self.min_scale, *self.extra(raw)], -1)

    def extra(self, raw: torch.Tensor) -> list[torch.Tensor]:
        return []

    def point(self, params: torch.Tensor) -> torch.Tensor:
        return params[..., 0]  # the mean (Student-t: df > 2, so it exists)

    def nll(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = (y - params[..., 0]) / params[..., 1]
        return torch.log(params[..., 1]) + 0.5 * z**2 + HALF_LOG_2PI

    def loss(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.nll(params, y).mean()

    def to_original(self, params: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        loc, scale = loc[..., None], scale[..., None]
        return torch.cat([params[..., :1] * scale + loc, params[..., 1:2] * scale, params[..., 2:]], -1)


class StudentTHead(GaussianHead):
    family, n_params, names = "student_t", 3, ("loc", "scale", "df")

    def extra(self, raw: torch.Tensor) -> list[torch.Tensor]:
        return [2 + F.softplus(raw[..., 2:3])]  # df > 2: the variance exists, so does a scale to compare

    def nll(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loc, scale, df = params.unbind(-1)
        return -torch.distributions.StudentT(df, loc, scale).log_prob(y)


class QuantileHead(nn.Module):
    family, n_params = "quantiles", None

    def __init__(self, levels: list[float]):
        super().__init__()
        self.levels = list(levels)
        self.n_params = len(self.levels)
        self.names = tuple(quantile_name(q) for q in self.levels)
        self.register_buffer("tau", torch.tensor(self.levels), persistent=False)  # in hparams, not the state
        self.median = min(range(len(levels)), key=lambda i: abs(levels[i] - 0.5))

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        raw = out.unflatten(-1, (-1, self.n_params))
        base = raw[..., :1]
        return torch.cat([base, base + torch.cumsum(F.softplus(raw[..., 1:]), -1)], -1)

    def point(self, params: torch.Tensor) -> torch.Tensor:
        return params[..., self.median]

    def loss(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pinball(params, y, self.tau).mean()

    def to_original(self, params: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return params * scale[..., None] + loc[..., None]


def pinball(q: torch.Tensor, y: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Pinball (quantile) loss per level: q (..., K) quantiles at levels tau (K,), y (...)."""
    d = y.unsqueeze(-1) - q
    return torch.maximum(tau * d, (tau - 1) * d)


def quantile_name(level: float) -> str:
    """0.05 -> 'q05', 0.5 -> 'q50', 0.025 -> 'q2_5': metric and CSV column names without dots."""
    pct = f"{level * 100:g}".replace(".", "_")
    return "q" + (pct.zfill(2) if "_" not in pct else pct)


def build(head: str, loss_fn: nn.Module, quantiles, min_scale: float) -> nn.Module:
    """The head named by `model.head`; a bad name or bad levels is one line naming the key."""
    if head not in HEADS:
        raise ForecastingError(f"model.head: unknown head {head!r}; use one of {list(HEADS)}")
    if not (isinstance(min_scale, (int, float)) and min_scale > 0):
        raise ForecastingError(f"model.min_scale: must be > 0 (a floor for the scale), got {min_scale!r}")
    if head == "point":
        return PointHead(loss_fn)
    if head == "gaussian":
        return GaussianHead(float(min_scale))
    if head == "student_t":
        return StudentTHead(float(min_scale))
    quantiles = DEFAULT_QUANTILES if quantiles is None else quantiles
    levels = list(quantiles) if isinstance(quantiles, (list, tuple)) else None
    ok = levels and all(isinstance(q, (int, float)) and 0 < q < 1 for q in levels)
    if not ok or any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
        raise ForecastingError(
            f"model.quantiles: {quantiles!r}; give levels strictly between 0 and 1 in increasing order without "
            "repeats, e.g. [0.05, 0.5, 0.95]"
        )
    return QuantileHead([float(q) for q in levels])
