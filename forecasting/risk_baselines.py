"""Baselines for the forecast distribution, fitted on training rows only, scored on the model's windows.

For return targets, three distributions of the next return(s), scored like the model
(calibration.py: `baseline_crps_garch`, `baseline_coverage_90_ewma`, `baseline_kupiec_p_05_empirical`):
- empirical: the quantiles of the training targets (levels 0.005..0.995): no conditioning at all;
- ewma: RiskMetrics (J.P. Morgan 1996): Gaussian, mean 0, variance s2[t+1] = 0.94 s2[t] + 0.06 r[t]^2;
- garch: GARCH(1,1), constant mean, Gaussian innovations, fitted per ticker by maximum likelihood
  on that ticker's training returns only (garch.py: numpy and scipy, the model and conventions of
  the `arch` package, which tests/test_calibration.py checks it against), then run forward with the
  fitted parameters over every row: each forecast uses the returns up to its own day and nothing later.
For log-variance targets GARCH's variance forecast, in logs, is a point baseline next to naive,
mean and HAR (`baseline_mse_garch`, `skill_vs_garch`); it is shifted by the mean training gap
between the target and log GARCH variance, since a Garman-Klass variance is not a close-to-close one.

Recursions start from each ticker's training variance and run in C (scipy.signal.lfilter: both
are linear in the variance). The data module fits these with the scaler and keeps the parameters as
plain data in its state.
"""

import math

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_info
from scipy.signal import lfilter  # Lightning/torchmetrics import scipy anyway

from forecasting import garch as garch_fit

EWMA_LAMBDA = 0.94  # RiskMetrics' daily decay
EMPIRICAL_LEVELS = tuple(float(v) for v in (np.arange(100) + 0.5) / 100)
FAMILIES = {"empirical": ("quantiles", EMPIRICAL_LEVELS), "ewma": ("gaussian", None), "garch": ("gaussian", None)}
MIN_GARCH_RETURNS = 100  # fewer training returns than this: no GARCH fit for the ticker
GAP_ROWS = 1 << 20  # the log-variance gap is averaged this many rows at a time


def fit(returns, ticker, train_rows, targets, in_train, target_kind: str) -> dict | None:
    """Parameters from training data only, as plain data.

    returns: (rows,) log returns (NaN where unknown); ticker: (rows,); train_rows: rows whose return
    is a training day's; targets: (rows, H) in original units; in_train: the training samples.
    """
    if returns is None or target_kind not in ("return", "log_variance"):
        return None
    params: dict = {"var0": {}, "garch": None, "empirical": None, "log_var_gap": None}
    names, spans = runs(ticker)
    if target_kind == "return":
        params["empirical"] = np.quantile(targets[in_train], EMPIRICAL_LEVELS, axis=0).T.tolist()  # (H, 100)
    fits, short = {}, []
    for t, (a, b) in zip(names, spans, strict=True):  # each ticker's finite training returns, one at a time
        r = np.asarray(returns[a:b], dtype=np.float64)[train_rows[a:b]]
        r = r[np.isfinite(r)]
        params["var0"][t] = float(r.var()) if len(r) > 1 else float("nan")
        if len(r) >= MIN_GARCH_RETURNS:
            fits[t] = r
        else:
            short.append(t)
    if short:
        rank_zero_info(f"GARCH baseline skipped: tickers {sorted(short)} have < {MIN_GARCH_RETURNS} training returns")
        return params
    # One maximum-likelihood fit per ticker, on every CPU this process may use (one under DDP, whose
    # other ranks use the others).
    ranks = torch.distributed.is_available() and torch.distributed.is_initialized()
    params["garch"] = dict(zip(fits, garch_fit.fit_many(list(fits.values()), 1 if ranks else None), strict=True))
    if target_kind == "log_variance":
        log_var = garch_variance(returns, ticker, params, targets.shape[1], shift=0.0)
        total, count = np.zeros(targets.shape[1]), np.zeros(targets.shape[1])
        for a in range(0, len(targets), GAP_ROWS):  # the mean gap over training samples, a block at a time
            rows = slice(a, a + GAP_ROWS)
            gap = targets[rows][in_train[rows]] - log_var[rows][in_train[rows]]
            total += np.nansum(gap, axis=0)
            count += np.sum(~np.isnan(gap), axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            params["log_var_gap"] = [float(v) for v in total / count]
    return params


def runs(ticker) -> tuple[list[str], list[tuple[int, int]]]:
    """Each ticker's name and (first, end) row, in row order: the rows of a ticker are contiguous
    (the data module sorts them by ticker). `ticker`: a NumPy array, a Series or a Categorical."""
    if isinstance(ticker, pd.Series):
        ticker = ticker.array
    if isinstance(ticker, pd.Categorical):
        codes, labels = ticker.codes, np.asarray(ticker.categories).astype(str)
    else:
        codes, uniques = pd.factorize(np.asarray(ticker), sort=False)
        labels = np.asarray(uniques).astype(str)
    n = len(codes)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if n else np.empty(0, np.int64)
    if len(np.unique(codes[starts])) != len(starts):
        raise ValueError("risk baselines: each ticker's rows must be contiguous (sorted by ticker)")
    ends = np.r_[starts[1:], n]
    return [str(labels[c]) for c in codes[starts]], list(zip(starts.tolist(), ends.tolist(), strict=True))


def recursion(returns: np.ndarray, s0: float, decay: float, gain: float, level: float, mu: float = 0.0):
    """(len(returns),): s2 after each row of s2 <- level + gain (r - mu)^2 + decay s2, from s0; a
    NaN return leaves s2 unchanged (rows before the first finite return keep s0). One linear
    filter (scipy.signal.lfilter) over the finite returns, then carried forward over the NaN rows."""
    finite = np.isfinite(returns)
    out = np.full(len(returns), s0, dtype=np.float64)
    if not finite.any():
        return out
    if not math.isfinite(s0):  # NaN from then on, as a step from NaN gives
        out[np.argmax(finite) :] = np.nan
        return out
    r = returns[finite]
    drive = level + gain * (r - mu) ** 2
    s2 = lfilter([1.0], [1.0, -decay], drive, zi=[decay * s0])[0]
    done = np.cumsum(finite)  # finite returns seen up to and including each row
    out[done > 0] = s2[done[done > 0] - 1]
    return out


def one_step_variance(returns, ticker, var0: dict, coefficients) -> np.ndarray:
    """(rows,): the variance forecast for the day after each row: s2 <- level + gain (r - mu)^2 +
    decay s2 applied to each ticker's returns in order from its training variance (a NaN return
    leaves s2 unchanged). `coefficients(ticker)`: (decay, gain, level, mu), or None: NaN for it."""
    out = np.full(len(returns), np.nan)
    for t, (a, b) in zip(*runs(ticker), strict=True):
        r, s0, c = np.asarray(returns[a:b], dtype=np.float64), var0.get(t, float("nan")), coefficients(t)
        if c is None:  # no coefficients: s0 until its first finite return, NaN from there on
            out[a:b] = s0
            out[a:b][np.cumsum(np.isfinite(r)) > 0] = np.nan
        else:
            out[a:b] = recursion(r, s0, *c)
    return out


def ewma_variance(returns, ticker, var0: dict) -> np.ndarray:
    """(rows,): RiskMetrics' s2[t+1] = 0.94 s2[t] + 0.06 r[t]^2 (mean 0) after each row."""
    return one_step_variance(returns, ticker, var0, lambda t: (EWMA_LAMBDA, 1 - EWMA_LAMBDA, 0.0, 0.0))


def per_row(ticker, values: dict, default: float) -> np.ndarray:
    """(rows,): values[ticker of the row] (default for tickers not in `values`)."""
    names, spans = runs(ticker)
    lengths = [b - a for a, b in spans]
    return np.repeat(np.array([values.get(t, default) for t in names], dtype=np.float64), lengths)


def garch_variance(returns, ticker, params: dict, horizon: int, dtype=np.float64, shift=None) -> np.ndarray:
    """(rows, horizon): GARCH variance forecasts for 1..horizon days after each row, built one
    ticker at a time (no temporaries the size of the file); with `shift`, log(variance) + shift
    (taken in float64 before storing as `dtype`)."""
    garch, var0 = params["garch"], params["var0"]
    out = np.empty((len(returns), horizon), dtype=dtype)
    for t, (a, b) in zip(*runs(ticker), strict=True):
        r, s0 = np.asarray(returns[a:b], dtype=np.float64), var0.get(t, float("nan"))
        if t not in garch:  # a ticker unseen in training (predict on another file): s0 until its first return
            first = np.full(b - a, s0)
            first[np.cumsum(np.isfinite(r)) > 0] = np.nan
            persistence, omega = 0.0, 0.0
        else:
            mu, omega, alpha, beta = garch[t]
            first = recursion(r, s0, beta, alpha, omega, mu)
            persistence = alpha + beta
        long_run = omega / max(1 - persistence, 1e-12) if persistence < 1 else first
        for h in range(horizon):  # v[t+h] = v_bar + (alpha + beta)^(h-1) (v[t+1] - v_bar)
            v = long_run + persistence**h * (first - long_run)
            out[a:b, h] = v if shift is None else np.log(v) + np.broadcast_to(shift, (horizon,))[h]
    return out


def forecast_rows(returns, ticker, params: dict | None, horizon: int, target_kind: str, dtype=np.float64):
    """(point, risk): point baselines name -> (rows, H) for the skill table (GARCH for log-variance
    targets); distribution baselines name -> (rows, H, n_params) in original units (return targets)."""
    point: dict[str, np.ndarray] = {}
    risk: dict[str, np.ndarray] = {}
    if params is None or returns is None:
        return point, risk
    rows = len(returns)
    if target_kind == "return":
        risk["empirical"] = np.broadcast_to(np.asarray(params["empirical"]), (rows, horizon, len(EMPIRICAL_LEVELS)))
        scale = np.sqrt(ewma_variance(returns, ticker, params["var0"]))
        risk["ewma"] = np.stack([np.zeros((rows, horizon)), np.repeat(scale[:, None], horizon, 1)], -1)
        if params["garch"] is not None:
            mu = per_row(ticker, {t: p[0] for t, p in params["garch"].items()}, np.nan)
            var = garch_variance(returns, ticker, params, horizon)
            risk["garch"] = np.stack([np.repeat(mu[:, None], horizon, 1), np.sqrt(var)], -1)
    elif params["garch"] is not None and params["log_var_gap"] is not None:
        gap = np.asarray(params["log_var_gap"])
        point["garch"] = garch_variance(returns, ticker, params, horizon, dtype, shift=gap)
    return point, risk
