"""Forecasts that need no training, scored on exactly the model's windows.

A model is only learning if it beats these on the same samples:
- naive: the last observed value of the target series ("same as yesterday");
- mean:  the mean of the training targets (about zero for returns);
- har:   for log-variance targets, the HAR model (Corsi 2009) on log variance: one
         linear regression of the target on its 1-, 5- and 22-day trailing means,
         fitted on training samples only.

The data module fits them with the scaler (`fit`, stored as plain lists in its
state) and hands every batch `baselines[name]`: (B, horizon) in original units.
The Forecaster logs their MSE and the model's skill against each one.
"""

import numpy as np
import pandas as pd

LOG_VARIANCE_TARGETS = {"gk_log_var"}  # targets that are the log of a variance: HAR and QLIKE apply
HAR_LAGS = (1, 5, 22)  # a day, a week, a month of trading days


def har_regressors(series: np.ndarray, ticker: np.ndarray) -> np.ndarray:
    """(rows, 4): a constant and the trailing 1/5/22-day means of `series` within each ticker (rows
    sorted by ticker; NaN until a ticker has that many rows, or where the window holds a NaN).
    Sums over a sliding window of all rows at once, then each ticker's first lag - 1 rows NaN."""
    n = len(series)
    out = np.ones((n, 1 + len(HAR_LAGS)))
    series = np.asarray(series, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, ticker[1:] != ticker[:-1]]) if n else np.zeros(0, np.int64)
    position = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))  # row within its ticker
    for k, lag in enumerate(HAR_LAGS, start=1):
        column = out[:, k]
        column[: lag - 1] = np.nan
        if n >= lag:
            column[lag - 1 :] = np.lib.stride_tricks.sliding_window_view(series, lag).sum(axis=1) / lag
        column[position < lag - 1] = np.nan
    return out


# HAR regressors are built for this many rows at a time (whole tickers): a (rows, 4) float64
# matrix of the whole file would be the largest array of the data pipeline.
CHUNK_ROWS = 1 << 20


def chunks(ticker: np.ndarray, size: int = CHUNK_ROWS):
    """Slices of about `size` rows that never split a ticker (rows sorted by ticker)."""
    starts = np.flatnonzero(np.r_[True, ticker[1:] != ticker[:-1]])
    cuts = [0]
    for start in starts[1:].tolist():
        if start - cuts[-1] >= size:
            cuts.append(start)
    cuts.append(len(ticker))
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        if b > a:
            yield slice(a, b)


def har_moments(series: np.ndarray, ticker: np.ndarray, targets: np.ndarray, train: np.ndarray):
    """X'X (4, 4) and X'y (4, H) of the HAR regression over the training rows, summed chunk by chunk;
    parts (DDP ranks) add them up."""
    xtx, xty = np.zeros((1 + len(HAR_LAGS),) * 2), np.zeros((1 + len(HAR_LAGS), targets.shape[1]))
    for part in chunks(ticker):
        x = har_regressors(series[part], ticker[part])
        ok = train[part] & np.isfinite(x).all(1)
        x, y = x[ok], targets[part][ok]
        xtx += x.T @ x
        xty += x.T @ y
    return xtx, xty


def fit(
    series: np.ndarray, ticker: np.ndarray, targets: np.ndarray, train: np.ndarray, target: str, gather=None
) -> dict:
    """Baseline parameters from the training samples (`train`: rows whose targets are all training targets).

    series: (rows,) target series in original units, rows sorted by ticker; targets: (rows, H) the values
    to forecast. `gather(obj)`: every process's `obj` (DDP ranks holding different tickers; None: one).
    The HAR regression is solved from its normal equations, summed over chunks and processes.
    """
    gather = gather or (lambda obj: [obj])
    sums = gather((targets[train].sum(0), int(train.sum())))
    total, count = sum(s for s, _ in sums), sum(n for _, n in sums)
    params = {"target_mean": [float(v) for v in total / count], "har_beta": None}
    if target in LOG_VARIANCE_TARGETS:
        parts = gather(har_moments(series, ticker, targets, train))
        xtx, xty = sum(p[0] for p in parts), sum(p[1] for p in parts)
        beta, *_ = np.linalg.lstsq(xtx, xty, rcond=None)
        params["har_beta"] = beta.tolist()
    return params


def forecast_rows(
    series: np.ndarray, ticker: np.ndarray, params: dict, horizon: int, dtype=np.float64
) -> dict[str, np.ndarray]:
    """Each baseline's forecast for the sample ending on every row: name -> (rows, horizon) of `dtype`;
    `mean` is one row broadcast (read-only, no memory per row)."""
    out = {
        "naive": np.repeat(series[:, None].astype(dtype), horizon, axis=1),
        "mean": np.broadcast_to(np.asarray(params["target_mean"], dtype=dtype), (len(series), horizon)),
    }
    if params.get("har_beta") is not None:
        beta = np.asarray(params["har_beta"])
        har = out["har"] = np.empty((len(series), horizon), dtype=dtype)
        for part in chunks(ticker):
            forecast = har_regressors(series[part], ticker[part]) @ beta
            # Rows with less than 22 days of history have no HAR forecast: fall back to naive.
            har[part] = np.where(np.isfinite(forecast), forecast, series[part, None])
    return out


def scores(forecasts: dict[str, np.ndarray], actual: np.ndarray, direction: bool = False) -> pd.DataFrame:
    """MSE, MAE and skill 1 - MSE / MSE(baseline) per forecast, in original units.

    direction=True (return targets) adds the share of correct signs, next to the share of
    up days (`up_share`): what always forecasting "up" would score.
    """
    mse = {n: float(np.mean((f - actual) ** 2)) for n, f in forecasts.items()}
    table = pd.DataFrame({"mse": mse, "mae": {n: float(np.mean(np.abs(f - actual))) for n, f in forecasts.items()}})
    for base in ("naive", "mean", "har"):
        if base in forecasts:
            table[f"skill_vs_{base}"] = 1 - table["mse"] / mse[base]
    if direction:
        table["hit_rate"] = {n: float(np.mean(np.sign(f) == np.sign(actual))) for n, f in forecasts.items()}
        table["up_share"] = float(np.mean(actual > 0))
    return table
