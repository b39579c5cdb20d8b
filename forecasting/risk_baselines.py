"""Baselines for the forecast distribution, fitted on training rows only, scored on the model's windows.

For return targets, three distributions of the next return(s), scored like the model
(calibration.py: `baseline_crps_garch`, `baseline_coverage_90_ewma`, `baseline_kupiec_p_05_empirical`):
- empirical: the quantiles of the training targets (levels 0.005..0.995): no conditioning at all;
- ewma: RiskMetrics (J.P. Morgan 1996): Gaussian, mean 0, variance s2[t+1] = 0.94 s2[t] + 0.06 r[t]^2;
- garch: GARCH(1,1), constant mean, Gaussian innovations, fitted per ticker by maximum likelihood
  on that ticker's training returns only (`fit_garch`: numpy and scipy, the model and conventions of
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
import warnings

import numpy as np
import pandas as pd
from lightning.pytorch.utilities import rank_zero_info
from scipy.optimize import minimize  # scipy.optimize and scipy.signal: Lightning/torchmetrics import them anyway
from scipy.signal import lfilter

EWMA_LAMBDA = 0.94  # RiskMetrics' daily decay
EMPIRICAL_LEVELS = tuple(float(v) for v in (np.arange(100) + 0.5) / 100)
FAMILIES = {"empirical": ("quantiles", EMPIRICAL_LEVELS), "ewma": ("gaussian", None), "garch": ("gaussian", None)}
MIN_GARCH_RETURNS = 100  # fewer training returns than this: no GARCH fit for the ticker
GAP_ROWS = 1 << 20  # the log-variance gap is averaged this many rows at a time
LOG_2PI = math.log(2 * math.pi)


def _garch_terms(params, y, backcast):
    """Residuals, conditional variances and the lagged squared residuals of a GARCH(1,1) with
    constant mean on y: sigma2[t] = omega + alpha e[t-1]^2 + beta sigma2[t-1], e[-1]^2 = sigma2[-1] = backcast."""
    mu, omega, alpha, beta = params
    e = y - mu
    e2_lag = np.empty_like(e)
    e2_lag[0] = backcast
    e2_lag[1:] = e[:-1] ** 2
    sigma2 = lfilter([1.0], [1.0, -beta], omega + alpha * e2_lag, zi=[beta * backcast])[0]
    return e, sigma2, e2_lag


def _garch_nll(params, y, backcast):
    """Gaussian negative log-likelihood of the GARCH(1,1) and its exact gradient (by the adjoint of the
    linear variance filter): what arch's `arch_model(..., mean="Constant", vol="GARCH", dist="normal")` minimises."""
    mu, omega, alpha, beta = params
    e, sigma2, e2_lag = _garch_terms(params, y, backcast)
    if not np.all(sigma2 > 0):
        return np.inf, np.zeros(4)
    nll = 0.5 * float(np.sum(LOG_2PI + np.log(sigma2) + e * e / sigma2))
    g = 0.5 * (1.0 - e * e / sigma2) / sigma2  # d nll / d sigma2[t]
    lam = lfilter([1.0], [1.0, -beta], g[::-1])[::-1]  # d nll / d (input of the filter at t)
    s2_lag = np.empty_like(sigma2)
    s2_lag[0] = backcast
    s2_lag[1:] = sigma2[:-1]
    d_mu = -float(np.sum(e / sigma2)) - 2.0 * alpha * float(lam[1:] @ e[:-1])
    grad = np.array([d_mu, lam.sum(), lam @ e2_lag, lam @ s2_lag])
    return nll, grad


def fit_garch(returns: np.ndarray) -> list[float]:
    """[mu, omega, alpha, beta] of a GARCH(1,1) fitted by maximum likelihood, in the returns' own units.

    The model of arch's `arch_model(100 * r, mean="Constant", vol="GARCH", p=1, q=1, dist="normal")`
    with its conventions: the recursion starts from the backcast (a 0.94-weighted mean of the first 75
    squared residuals about the sample mean), its bounds (1e-8 v <= omega <= 10 v for v the mean squared
    residual, 0 <= alpha, beta <= 1, alpha + beta <= 1), the best of its grid of starting values, SLSQP.
    Two differences, neither in the model: the gradient is exact (arch's is numerical), and the returns
    are standardised rather than put in percent (the model is scale-equivariant: mu scales with the
    returns, omega with their square), so the optimiser is equally well conditioned at any scale.
    """
    r = returns[np.isfinite(returns)].astype(float)
    scale = float(np.sqrt(np.mean((r - r.mean()) ** 2)))
    if not scale > 0:  # constant returns: no variance to model
        return [float(r.mean()), 0.0, 0.0, 0.0]
    y = r / scale
    resids = y - y.mean()
    tau = min(75, len(y))
    w = 0.94 ** np.arange(tau)
    backcast = float(np.sum(resids[:tau] ** 2 * (w / w.sum())))
    v = float(np.mean(resids**2))  # 1 up to rounding
    starts = [
        np.array([y.mean(), (1 - persistence) * v, alpha, persistence - alpha])
        for alpha in (0.01, 0.05, 0.1, 0.2)
        for persistence in (0.5, 0.7, 0.9, 0.98)
    ]
    start = min(starts, key=lambda p: _garch_nll(p, y, backcast)[0])
    bounds = [(-1e3, 1e3), (1e-8 * v, 10 * v), (0.0, 1.0), (0.0, 1.0)]  # a mean 1000 sd out: none
    stationary = {"type": "ineq", "fun": lambda p: 1.0 - p[2] - p[3], "jac": lambda p: np.array([0.0, 0.0, -1.0, -1.0])}
    with warnings.catch_warnings():
        # SLSQP may step just outside the bounds while it searches; the answer is clipped to them.
        warnings.filterwarnings("ignore", "Values in x were outside bounds", RuntimeWarning)
        found = minimize(
            _garch_nll,
            start,
            args=(y, backcast),
            jac=True,
            method="SLSQP",
            bounds=bounds,
            constraints=[stationary],
            options={"ftol": 1e-10, "maxiter": 200},
        )
    # A short or quiet series may stop the optimiser early: the estimate is still the best it found.
    best = found.x if np.isfinite(found.fun) and found.fun <= _garch_nll(start, y, backcast)[0] else start
    mu, omega, alpha, beta = (float(np.clip(p, lo, hi)) for p, (lo, hi) in zip(best, bounds, strict=True))
    return [mu * scale, omega * scale**2, alpha, beta]


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
    garch, short = {}, []
    for t, (a, b) in zip(names, spans, strict=True):  # each ticker's finite training returns, one at a time
        r = np.asarray(returns[a:b], dtype=np.float64)[train_rows[a:b]]
        r = r[np.isfinite(r)]
        params["var0"][t] = float(r.var()) if len(r) > 1 else float("nan")
        if len(r) >= MIN_GARCH_RETURNS:
            garch[t] = fit_garch(r)
        else:
            short.append(t)
    if short:
        rank_zero_info(f"GARCH baseline skipped: tickers {sorted(short)} have < {MIN_GARCH_RETURNS} training returns")
        return params
    params["garch"] = garch
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
