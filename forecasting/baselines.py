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
    """(rows, 4): a constant and the trailing 1/5/22-day means of `series` within each ticker."""
    out = np.ones((len(series), 1 + len(HAR_LAGS)))
    grouped = pd.Series(series).groupby(ticker, sort=False)
    for k, lag in enumerate(HAR_LAGS, start=1):
        out[:, k] = grouped.transform(lambda s, n=lag: s.rolling(n).mean()).to_numpy()
    return out


def fit(series: np.ndarray, ticker: np.ndarray, targets: np.ndarray, train: np.ndarray, target: str) -> dict:
    """Baseline parameters from the training samples (`train`: rows whose targets are all training targets).

    series: (rows,) target series in original units; targets: (rows, H) the values to forecast.
    """
    params = {"target_mean": [float(v) for v in targets[train].mean(0)], "har_beta": None}
    if target in LOG_VARIANCE_TARGETS:
        x = har_regressors(series, ticker)
        ok = train & np.isfinite(x).all(1)
        beta, *_ = np.linalg.lstsq(x[ok], targets[ok], rcond=None)
        params["har_beta"] = beta.tolist()
    return params


def forecast_rows(series: np.ndarray, ticker: np.ndarray, params: dict, horizon: int) -> dict[str, np.ndarray]:
    """Each baseline's forecast for the sample ending on every row: name -> (rows, horizon)."""
    out = {
        "naive": np.repeat(series[:, None], horizon, axis=1),
        "mean": np.broadcast_to(np.asarray(params["target_mean"]), (len(series), horizon)).copy(),
    }
    if params.get("har_beta") is not None:
        har = har_regressors(series, ticker) @ np.asarray(params["har_beta"])
        # Rows with less than 22 days of history have no HAR forecast: fall back to naive.
        out["har"] = np.where(np.isfinite(har), har, out["naive"])
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
