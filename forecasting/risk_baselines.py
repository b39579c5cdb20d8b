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
LOG_2PI = math.log(2 * math.pi)


def available() -> bool:
    """GARCH is always available: our own estimator needs numpy and scipy only."""
    return True


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
    tickers = list(dict.fromkeys(ticker.tolist()))
    for t in tickers:
        r = returns[(ticker == t) & train_rows]
        r = r[np.isfinite(r)]
        params["var0"][str(t)] = float(r.var()) if len(r) > 1 else float("nan")
    if target_kind == "return":
        params["empirical"] = np.quantile(targets[in_train], EMPIRICAL_LEVELS, axis=0).T.tolist()  # (H, 100)
    garch = {}
    for t in tickers:
        r = returns[(ticker == t) & train_rows]
        if np.isfinite(r).sum() >= MIN_GARCH_RETURNS:
            garch[str(t)] = fit_garch(r)
    if len(garch) < len(tickers):
        short = sorted(set(map(str, tickers)) - set(garch))
        rank_zero_info(f"GARCH baseline skipped: tickers {short} have < {MIN_GARCH_RETURNS} training returns")
        return params
    params["garch"] = garch
    if target_kind == "log_variance":
        log_var = np.log(garch_variance(returns, ticker, params, targets.shape[1]))
        gap = targets[in_train] - log_var[in_train]
        params["log_var_gap"] = [float(v) for v in np.nanmean(gap, axis=0)]
    return params


def ticker_groups(ticker):
    """(key, rows) per ticker in order of first appearance, rows ascending; keys are str (the params' keys)."""
    codes, uniques = pd.factorize(np.asarray(ticker), sort=False)  # a missing ticker (code -1): no group
    order = np.argsort(codes, kind="stable")
    edges = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    return [(str(t), order[edges[k] : edges[k + 1]]) for k, t in enumerate(uniques)]


def per_ticker(ticker, values: dict, default: float, groups=None) -> np.ndarray:
    """(rows,): values[str(ticker)] on each row, `default` for a ticker without one."""
    out = np.full(len(ticker), default, dtype=float)
    for t, rows in ticker_groups(ticker) if groups is None else groups:
        out[rows] = values.get(t, default)
    return out


def one_step_variance(returns, ticker, var0: dict, recursion, groups=None) -> np.ndarray:
    """(rows,): the variance forecast for the day after each row, each ticker's returns run in order
    from its training variance: s2 = x + decay * s2 at each finite return (a NaN return leaves s2
    unchanged), where `recursion(t, r)` gives (x, decay) for ticker t's finite returns r, or None for a
    ticker without a model (its forecasts are NaN from its first return on). Linear in s2, so one
    scipy.signal.lfilter per ticker runs it in C. groups: ticker_groups(ticker), if already at hand."""
    returns = np.asarray(returns, dtype=np.float64)
    out = np.full(len(returns), np.nan)
    for t, rows in ticker_groups(ticker) if groups is None else groups:
        s2 = var0.get(t, float("nan"))
        r = returns[rows]
        finite = np.isfinite(r)
        model = recursion(t, r[finite])
        if model is None:
            after = np.full(int(finite.sum()), np.nan)
        else:
            x, decay = model
            after = lfilter([1.0], [1.0, -decay], x, zi=[decay * s2])[0] if len(x) else x
        out[rows] = np.concatenate([[s2], after])[np.cumsum(finite)]  # s2 after the last finite return so far
    return out


def ewma_variance(returns, ticker, var0: dict, groups=None) -> np.ndarray:
    """(rows,): RiskMetrics' s2[t+1] = 0.94 s2[t] + 0.06 r[t]^2 (mean 0) after each row."""
    return one_step_variance(returns, ticker, var0, lambda t, r: ((1 - EWMA_LAMBDA) * r * r, EWMA_LAMBDA), groups)


def garch_variance(returns, ticker, params: dict, horizon: int, groups=None) -> np.ndarray:
    """(rows, horizon): GARCH variance forecasts for 1..horizon days after each row."""
    garch = params["garch"]
    groups = ticker_groups(ticker) if groups is None else groups

    def recursion(t, r):
        if t not in garch:  # a ticker unseen in training (predict on another file)
            return None
        mu, omega, alpha, beta = garch[t]
        return omega + alpha * (r - mu) ** 2, beta

    first = one_step_variance(returns, ticker, params["var0"], recursion, groups)
    out = np.empty((len(returns), horizon))
    persistence = per_ticker(ticker, {t: p[2] + p[3] for t, p in garch.items()}, 0.0, groups)
    omega = per_ticker(ticker, {t: p[1] for t, p in garch.items()}, 0.0, groups)
    long_run = np.where(persistence < 1, omega / np.maximum(1 - persistence, 1e-12), first)
    for h in range(horizon):  # v[t+h] = v_bar + (alpha + beta)^(h-1) (v[t+1] - v_bar)
        out[:, h] = long_run + persistence**h * (first - long_run)
    return out


def forecast_rows(returns, ticker, params: dict | None, horizon: int, target_kind: str):
    """(point, risk): point baselines name -> (rows, H) for the skill table (GARCH for log-variance
    targets); distribution baselines name -> (rows, H, n_params) in original units (return targets)."""
    point: dict[str, np.ndarray] = {}
    risk: dict[str, np.ndarray] = {}
    if params is None or returns is None:
        return point, risk
    rows = len(returns)
    groups = ticker_groups(ticker)
    if target_kind == "return":
        risk["empirical"] = np.broadcast_to(np.asarray(params["empirical"]), (rows, horizon, len(EMPIRICAL_LEVELS)))
        scale = np.sqrt(ewma_variance(returns, ticker, params["var0"], groups))
        risk["ewma"] = np.stack([np.zeros((rows, horizon)), np.repeat(scale[:, None], horizon, 1)], -1)
        if params["garch"] is not None:
            mu = per_ticker(ticker, {t: p[0] for t, p in params["garch"].items()}, np.nan, groups)
            var = garch_variance(returns, ticker, params, horizon, groups)
            risk["garch"] = np.stack([np.repeat(mu[:, None], horizon, 1), np.sqrt(var)], -1)
    elif params["garch"] is not None and params["log_var_gap"] is not None:
        var = garch_variance(returns, ticker, params, horizon, groups)
        point["garch"] = np.log(var) + np.asarray(params["log_var_gap"])
    return point, risk
