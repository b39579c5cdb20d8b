"""Baselines for the forecast distribution, fitted on training rows only, scored on the model's windows.

For return targets, three distributions of the next return(s), scored like the model
(calibration.py: `baseline_crps_garch`, `baseline_coverage_90_ewma`, `baseline_kupiec_p_05_empirical`):
- empirical: the quantiles of the training targets (levels 0.005..0.995): no conditioning at all;
- ewma: RiskMetrics (J.P. Morgan 1996): Gaussian, mean 0, variance s2[t+1] = 0.94 s2[t] + 0.06 r[t]^2;
- garch: GARCH(1,1), constant mean, Gaussian innovations, fitted per ticker by maximum likelihood
  (the `arch` package) on that ticker's training returns only, then run forward with the fitted
  parameters over every row: each forecast uses the returns up to its own day and nothing later.
For log-variance targets GARCH's variance forecast, in logs, is a point baseline next to naive,
mean and HAR (`baseline_mse_garch`, `skill_vs_garch`); it is shifted by the mean training gap
between the target and log GARCH variance, since a Garman-Klass variance is not a close-to-close one.

Recursions start from each ticker's training variance. Without `arch` installed GARCH is skipped
with a one-line note (pip install -e ".[finance]"). The data module fits these with the scaler and
keeps the parameters as plain data in its state.
"""

import importlib.util
import math
import warnings

import numpy as np
import pandas as pd
from lightning.pytorch.utilities import rank_zero_info

EWMA_LAMBDA = 0.94  # RiskMetrics' daily decay
EMPIRICAL_LEVELS = tuple(float(v) for v in (np.arange(100) + 0.5) / 100)
FAMILIES = {"empirical": ("quantiles", EMPIRICAL_LEVELS), "ewma": ("gaussian", None), "garch": ("gaussian", None)}
MIN_GARCH_RETURNS = 100  # fewer training returns than this: no GARCH fit for the ticker


def available() -> bool:
    return importlib.util.find_spec("arch") is not None


def fit_garch(returns: np.ndarray) -> list[float]:
    """[mu, omega, alpha, beta] of a GARCH(1,1) fitted by maximum likelihood, in the returns' own units."""
    from arch import arch_model
    from arch.utility.exceptions import ConvergenceWarning, DataScaleWarning

    r = returns[np.isfinite(returns)] * 100  # arch's optimiser is tuned for percent returns
    with warnings.catch_warnings():
        # A short or quiet series may stop the optimiser early: the estimate is still the best it found.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", DataScaleWarning)
        fitted = arch_model(r, mean="Constant", vol="GARCH", p=1, q=1, dist="normal", rescale=False).fit(disp="off")
    mu, omega, alpha, beta = (float(fitted.params[k]) for k in ("mu", "omega", "alpha[1]", "beta[1]"))
    return [mu / 100, omega / 1e4, alpha, beta]


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
    if not available():
        rank_zero_info('GARCH baseline skipped: the `arch` package is not installed (pip install -e ".[finance]")')
        return params
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


def one_step_variance(returns, ticker, var0: dict, step) -> np.ndarray:
    """(rows,): the variance forecast for the day after each row, `step(s2, r)` applied to each
    ticker's returns in order from its training variance (a NaN return leaves s2 unchanged)."""
    out = np.full(len(returns), np.nan)
    for t, index in pd.Series(np.arange(len(returns))).groupby(ticker, sort=False):
        s2 = var0.get(str(t), float("nan"))
        for i in index.to_numpy():
            r = returns[i]
            if math.isfinite(r):
                s2 = step(str(t), s2, r)
            out[i] = s2
    return out


def garch_variance(returns, ticker, params: dict, horizon: int) -> np.ndarray:
    """(rows, horizon): GARCH variance forecasts for 1..horizon days after each row."""
    garch = params["garch"]

    def step(t, s2, r):
        if t not in garch:  # a ticker unseen in training (predict on another file)
            return float("nan")
        mu, omega, alpha, beta = garch[t]
        return omega + alpha * (r - mu) ** 2 + beta * s2

    first = one_step_variance(returns, ticker, params["var0"], step)
    out = np.empty((len(returns), horizon))
    persistence = np.array([sum(garch.get(str(t), [0, 0, 0, 0])[2:]) for t in ticker])
    omega = np.array([garch.get(str(t), [0, 0, 0, 0])[1] for t in ticker])
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
    if target_kind == "return":
        risk["empirical"] = np.broadcast_to(np.asarray(params["empirical"]), (rows, horizon, len(EMPIRICAL_LEVELS)))

        def ewma(t, s2, r):
            return EWMA_LAMBDA * s2 + (1 - EWMA_LAMBDA) * r * r

        scale = np.sqrt(one_step_variance(returns, ticker, params["var0"], ewma))
        risk["ewma"] = np.stack([np.zeros((rows, horizon)), np.repeat(scale[:, None], horizon, 1)], -1)
        if params["garch"] is not None:
            mu = np.array([params["garch"].get(str(t), [np.nan])[0] for t in ticker])
            var = garch_variance(returns, ticker, params, horizon)
            risk["garch"] = np.stack([np.repeat(mu[:, None], horizon, 1), np.sqrt(var)], -1)
    elif params["garch"] is not None and params["log_var_gap"] is not None:
        point["garch"] = np.log(garch_variance(returns, ticker, params, horizon)) + np.asarray(params["log_var_gap"])
    return point, risk
