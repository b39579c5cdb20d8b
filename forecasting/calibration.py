"""Is the forecast distribution right? Scores in the target's original units, for any head.

- nll: negative log-likelihood (Gaussian and Student-t heads: the quantile head has no density);
- crps: continuous ranked probability score, closed form for a Gaussian, otherwise twice the mean
  pinball loss over 100 quantile levels 0.005..0.995 (the quantile head's quantile function is
  interpolated linearly between its levels and held flat beyond the outermost ones);
- pinball_qNN: pinball loss per level (the head's levels, or heads.DEFAULT_QUANTILES);
- coverage_50 / coverage_90: share of actuals inside the central 50% / 90% interval, next to the
  nominal 0.5 / 0.9; width_90: the 90% interval's mean width (sharpness: narrower is better at
  equal coverage);
- return targets: breach_01 / breach_05, the share of days below the 1% / 5% value-at-risk
  quantile, with Kupiec's unconditional-coverage test (kupiec_lr_*, kupiec_p_*: a small p-value
  says the breach rate differs from its nominal level);
- conformal_coverage_50 / _90: split-conformal intervals for any head, point included. On the
  validation split the score max(lo - y, y - hi) of the head's central interval (|y - forecast|
  for a point head) gives a radius per horizon (its ceil((n + 1)(1 - a)) / n empirical quantile);
  test and predict widen the interval by it. Exchangeable data make the coverage exact on average.

Everything flattens (sample, horizon) pairs: with horizon > 1 the Kupiec test's independence
assumption is looser, since consecutive windows share target days.
"""

import math

import numpy as np
import torch
from scipy import special, stats
from torch import nn
from torchmetrics import CatMetric

from forecasting.models.heads import DEFAULT_QUANTILES, quantile_name

CRPS_LEVELS = (np.arange(100) + 0.5) / 100
INTERVALS = (0.5, 0.9)  # central intervals whose coverage is reported
VAR_LEVELS = (0.01, 0.05)  # value-at-risk levels of the breach rate and the Kupiec test
BASELINE_METRICS = ("nll", "crps", "coverage_50", "coverage_90", "width_90", "breach_01", "breach_05",
                    "kupiec_p_01", "kupiec_p_05")  # fmt: skip
RISK_BASELINES = ("empirical", "ewma", "garch")  # risk_baselines.py


def pct(level: float) -> str:
    """0.9 -> '90', 0.05 -> '05': metric name suffixes."""
    return quantile_name(level)[1:]


class Forecast:
    """A batch of forecast distributions in original units: params (N, H, n_params) of `family`
    (point, gaussian, student_t, quantiles; `levels` for quantiles)."""

    def __init__(self, family: str, params: np.ndarray, levels=None):
        self.family, self.params = family, np.asarray(params, dtype=np.float64)
        self.levels = None if levels is None else np.asarray(levels, dtype=np.float64)

    def quantile(self, tau: float) -> np.ndarray:
        p = self.params
        if self.family == "point":
            return p[..., 0]
        if self.family == "gaussian":
            return p[..., 0] + p[..., 1] * special.ndtri(tau)
        if self.family == "student_t":
            return p[..., 0] + p[..., 1] * stats.t.ppf(tau, p[..., 2])
        levels = self.levels
        j = int(np.clip(np.searchsorted(levels, tau) - 1, 0, len(levels) - 2)) if len(levels) > 1 else 0
        if len(levels) == 1 or tau <= levels[0]:
            return p[..., 0]
        if tau >= levels[-1]:
            return p[..., -1]
        w = (tau - levels[j]) / (levels[j + 1] - levels[j])
        return (1 - w) * p[..., j] + w * p[..., j + 1]

    def cdf(self, y: np.ndarray) -> np.ndarray:
        """The probability integral transform: uniform on [0, 1] for a calibrated forecast."""
        p = self.params
        if self.family == "gaussian":
            return special.ndtr((y - p[..., 0]) / p[..., 1])
        if self.family == "student_t":
            return stats.t.cdf((y - p[..., 0]) / p[..., 1], p[..., 2])
        if self.family != "quantiles":
            raise ValueError("a point forecast has no distribution function")
        levels, k = self.levels, p.shape[-1]
        idx = (p <= y[..., None]).sum(-1)
        lo, hi = np.clip(idx - 1, 0, k - 1), np.clip(idx, 0, k - 1)
        q_lo = np.take_along_axis(p, lo[..., None], -1)[..., 0]
        q_hi = np.take_along_axis(p, hi[..., None], -1)[..., 0]
        w = np.where(q_hi > q_lo, (y - q_lo) / np.where(q_hi > q_lo, q_hi - q_lo, 1), 0.0)
        inside = levels[lo] + w * (levels[hi] - levels[lo])
        return np.where(idx == 0, levels[0] / 2, np.where(idx == k, (1 + levels[-1]) / 2, inside))

    def nll(self, y: np.ndarray) -> np.ndarray | None:
        p = self.params
        if self.family == "gaussian":
            z = (y - p[..., 0]) / p[..., 1]
            return np.log(p[..., 1]) + 0.5 * z**2 + 0.5 * math.log(2 * math.pi)
        if self.family == "student_t":
            return -stats.t.logpdf(y, p[..., 2], p[..., 0], p[..., 1])
        return None

    def crps(self, y: np.ndarray) -> np.ndarray:
        p = self.params
        if self.family == "point":
            return np.abs(y - p[..., 0])  # a point mass: CRPS is the absolute error
        if self.family == "gaussian":
            z = (y - p[..., 0]) / p[..., 1]
            return p[..., 1] * (z * (2 * special.ndtr(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))
        return 2 * np.mean([pinball(self.quantile(t), y, t) for t in CRPS_LEVELS], axis=0)

    def central(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        return self.quantile((1 - level) / 2), self.quantile((1 + level) / 2)


def pinball(q: np.ndarray, y: np.ndarray, tau: float) -> np.ndarray:
    d = y - q
    return np.maximum(tau * d, (tau - 1) * d)


def kupiec(breaches: int, n: int, p: float) -> tuple[float, float]:
    """Kupiec's (1995) unconditional-coverage likelihood ratio and its chi-square(1) p-value:
    LR = -2 log[(1 - p)^(n - x) p^x / ((1 - x/n)^(n - x) (x/n)^x)], x breaches in n days."""
    x, rate = breaches, breaches / n

    def loglik(q: float) -> float:
        # 0 * log(0) = 0: no breaches (or all) leaves only the other term
        return (n - x) * (math.log1p(-q) if n > x else 0.0) + (x * math.log(q) if x else 0.0)

    lr = max(0.0, -2 * (loglik(p) - loglik(rate)))
    return lr, float(stats.chi2.sf(lr, 1))


def conformal_radius(scores: np.ndarray, level: float) -> float:
    """Split-conformal radius: the ceil((n + 1) level)-th smallest score (inf if n is too small)."""
    scores = np.sort(scores[np.isfinite(scores)])
    k = math.ceil((len(scores) + 1) * level)
    return float(scores[k - 1]) if 0 < k <= len(scores) else math.inf


def conformal_scores(forecast: Forecast, y: np.ndarray, level: float) -> np.ndarray:
    lo, hi = forecast.central(level)
    return np.maximum(lo - y, y - hi)


def fit_conformal(forecast: Forecast, y: np.ndarray) -> dict[str, list[float]]:
    """Radius per interval level and horizon, from validation forecasts: plain lists for the checkpoint."""
    return {
        pct(a): [conformal_radius(conformal_scores(forecast, y, a)[:, h], a) for h in range(y.shape[1])]
        for a in INTERVALS
    }


def conformal_interval(forecast: Forecast, level: float, radius: list[float]) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = forecast.central(level)
    r = np.asarray(radius)
    return lo - r, hi + r


def evaluate(forecast: Forecast, y: np.ndarray, returns: bool, conformal: dict | None = None) -> dict[str, float]:
    """Every score of the module docstring that applies, as plain floats."""
    out: dict[str, float] = {}
    if forecast.family != "point":
        nll = forecast.nll(y)
        if nll is not None:
            out["nll"] = float(nll.mean())
        out["crps"] = float(forecast.crps(y).mean())
        levels = forecast.levels if forecast.family == "quantiles" else DEFAULT_QUANTILES
        for tau in levels:
            out[f"pinball_{pct(tau)}"] = float(pinball(forecast.quantile(tau), y, tau).mean())
        for a in INTERVALS:
            lo, hi = forecast.central(a)
            out[f"coverage_{pct(a)}"] = float(((lo <= y) & (y <= hi)).mean())
        lo, hi = forecast.central(0.9)
        out["width_90"] = float((hi - lo).mean())
        if returns:
            for p in VAR_LEVELS:
                breach = y < forecast.quantile(p)
                out[f"breach_{pct(p)}"] = float(breach.mean())
                out[f"kupiec_lr_{pct(p)}"], out[f"kupiec_p_{pct(p)}"] = kupiec(int(breach.sum()), breach.size, p)
    if conformal:
        for a in INTERVALS:
            if pct(a) in conformal and np.isfinite(conformal[pct(a)]).all():
                lo, hi = conformal_interval(forecast, a, conformal[pct(a)])
                out[f"conformal_coverage_{pct(a)}"] = float(((lo <= y) & (y <= hi)).mean())
                if a == 0.9:
                    out["conformal_width_90"] = float((hi - lo).mean())
    return out


def metric_names(family: str, levels, returns: bool) -> set[str]:
    """The names `evaluate` can give for this head (without the stage), baselines included."""
    names = {f"conformal_coverage_{pct(a)}" for a in INTERVALS} | {"conformal_width_90"}
    model = set()
    if family != "point":
        model = {"crps", "width_90", *(f"coverage_{pct(a)}" for a in INTERVALS)}
        model |= {"nll"} if family in ("gaussian", "student_t") else set()
        model |= {f"pinball_{pct(t)}" for t in (levels if family == "quantiles" else DEFAULT_QUANTILES)}
        if returns:
            model |= {f"{m}_{pct(p)}" for m in ("breach", "kupiec_lr", "kupiec_p") for p in VAR_LEVELS}
    if returns:
        names |= {f"baseline_{m}_{b}" for m in BASELINE_METRICS for b in RISK_BASELINES}
    return names | model


class Collector(nn.Module):
    """One epoch's forecast parameters and actuals in original units (and the risk baselines'),
    gathered across DDP ranks by torchmetrics, for the scores above at the epoch's end."""

    def __init__(self):
        super().__init__()
        self.parts = nn.ModuleDict()

    def _cat(self, name: str) -> CatMetric:
        if name not in self.parts:  # NaN must not be dropped: that would flatten the rows
            self.parts[name] = CatMetric(nan_strategy="disable")
        return self.parts[name]

    def update(self, params: torch.Tensor, actual: torch.Tensor, risk: dict[str, torch.Tensor]) -> None:
        for name, value in {"params": params, "actual": actual, **{f"risk_{k}": v for k, v in risk.items()}}.items():
            self._cat(name).to(value.device).update(value.detach().float().flatten(1))

    def compute(self, n_params: int) -> dict[str, np.ndarray] | None:
        """name -> (N, H, n_params) params, (N, H) actual, (N, H, k) per risk baseline; None if empty."""
        if "params" not in self.parts or self.parts["params"].update_count == 0:
            return None
        out = {name: m.compute().double().cpu().numpy() for name, m in self.parts.items() if m.update_count > 0}
        h = out["actual"].shape[1]
        return {k: v if k == "actual" else v.reshape(len(v), h, -1) for k, v in out.items()}

    def reset(self) -> None:
        for m in self.parts.values():
            m.reset()


def pit_figure(pit: np.ndarray, title: str):
    """A PIT histogram: flat at 1 for a calibrated forecast; U-shaped: too narrow; hump: too wide."""
    from matplotlib.figure import Figure  # imported when first drawn

    fig = Figure(figsize=(4.5, 3.2))
    fig.subplots_adjust(left=0.14, right=0.97, top=0.88, bottom=0.16)
    ax = fig.add_subplot()
    ax.hist(pit.ravel(), bins=10, range=(0, 1), density=True, edgecolor="white")
    ax.axhline(1.0, color="black", lw=1, ls="--", label="calibrated")
    ax.set_xlabel("PIT: forecast CDF at the actual")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper center", fontsize=8)
    return fig
