"""Is one forecast better than another, or is the difference noise? The Diebold-Mariano test.

    d_t = loss(model_t) - loss(baseline_t)         (below 0: the model did better on day t)
    DM  = mean(d) / sqrt(LRV(d) / n)               LRV: Newey-West (Bartlett) long-run variance
    HLN = DM * sqrt((n + 1 - 2h + h(h-1)/n) / n)   Harvey, Leybourne & Newbold (1997), t with n-1 df

Loss differentials of volatility forecasts are autocorrelated (a turbulent month is bad for
everyone), so the variance uses Newey-West lags: by default max(h - 1, floor(4 (n/100)^(2/9))),
the usual automatic rule, never fewer than the h - 1 lags an h-step forecast's errors overlap by.
"""

import math

import numpy as np
from scipy import stats as st


def squared_error(forecast: np.ndarray, actual: np.ndarray) -> np.ndarray:
    return (forecast - actual) ** 2


def qlike(forecast: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """QLIKE for log-variance forecasts (Patton 2011): exp(a - f) - (a - f) - 1 on variances exp(.)."""
    d = actual - forecast
    return np.exp(d) - d - 1


LOSSES = {"mse": squared_error, "qlike": qlike}


def newey_west_lags(n: int, horizon: int = 1) -> int:
    return max(horizon - 1, int(math.floor(4 * (n / 100) ** (2 / 9))))


def long_run_variance(d: np.ndarray, lags: int) -> float:
    """Newey-West: gamma_0 + 2 sum_{j<=lags} (1 - j/(lags+1)) gamma_j, gamma_j = (1/n) sum (d_t - m)(d_{t-j} - m)."""
    e = np.asarray(d, dtype=float) - np.mean(d)
    n = len(e)
    out = e @ e / n
    for j in range(1, min(lags, n - 1) + 1):
        out += 2 * (1 - j / (lags + 1)) * (e[j:] @ e[:-j]) / n
    return float(out)


def diebold_mariano(d: np.ndarray, horizon: int = 1, lags: int | None = None) -> dict:
    """DM test of H0: E[d] = 0 on the loss differential series `d` (model minus baseline, in time order).

    Returns the mean differential, the raw DM statistic, the HLN-corrected one, the lags used and
    p-values: `p_less` one-sided for H1 "the model's loss is lower", `p_two_sided`.
    """
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n < 3:
        raise ValueError(f"the Diebold-Mariano test needs at least 3 loss differentials, got {n}")
    lags = newey_west_lags(n, horizon) if lags is None else lags
    lrv = long_run_variance(d, lags)
    if lrv <= 0:  # identical forecasts: no evidence either way
        return {"n": n, "mean_d": float(d.mean()), "dm": 0.0, "hln": 0.0, "lags": lags,
                "p_less": 0.5, "p_two_sided": 1.0}  # fmt: skip
    dm = d.mean() / math.sqrt(lrv / n)
    h = horizon
    hln = dm * math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    t = st.t(df=n - 1)
    return {"n": n, "mean_d": float(d.mean()), "dm": float(dm), "hln": float(hln), "lags": lags,
            "p_less": float(t.cdf(hln)), "p_two_sided": float(2 * t.sf(abs(hln)))}  # fmt: skip
