"""GARCH(1,1) by maximum likelihood: the risk baselines' estimator (numpy and scipy only); `fit_many`
spreads many tickers' fits over the CPUs.

The model and conventions of the `arch` package (tests/test_calibration.py checks them against it).
"""

import math
import multiprocessing
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from scipy.optimize import minimize
from scipy.signal import lfilter

LOG_2PI = math.log(2 * math.pi)
PARALLEL_FITS = 64  # fewer fits than this: in this process (worker processes would cost more than they save)


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


def fit_many(series: list[np.ndarray], workers: int | None = None) -> list[list[float]]:
    """fit_garch of each series, the same numbers in any case; for PARALLEL_FITS or more on Linux, in
    `workers` forked processes (None: the CPUs this process may use). Forked, not spawned: a spawned
    worker would first import the caller's main script (a script without a __main__ guard would run
    again in every worker); the workers only run numpy and scipy, none of the parent's threads."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if workers <= 1 or len(series) < PARALLEL_FITS or not sys.platform.startswith("linux"):
        return [fit_garch(r) for r in series]
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(fit_garch, series, chunksize=max(1, len(series) // (8 * workers))))
    except (OSError, BrokenProcessPool) as err:  # no worker could start here: the same fits, one by one
        warnings.warn(f"GARCH fits: worker processes failed ({err}); fitting in this process", stacklevel=2)
        return [fit_garch(r) for r in series]
