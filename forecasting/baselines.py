"""Forecasts that need no training, on exactly the windows of a split.

A model is only learning if it beats these on the same samples:
- naive: the last observed value of the target series ("same as yesterday");
- mean:  the training-rows mean of the target (about zero for returns);
- har:   for volatility targets, the HAR model (Corsi 2009): one linear regression
         of the target on its 1-, 5- and 22-day means, fitted on training windows only.

All forecasts are (samples, horizon) arrays in the target's original units.
"""

import numpy as np
import pandas as pd

from forecasting.data.datamodule import PriceDataModule

VOLATILITY_TARGETS = {"gk_log_var", "log_range"}
HAR_LAGS = (1, 5, 22)  # a day, a week, a month of trading days


def har_regressors(series: np.ndarray, ticker: np.ndarray) -> np.ndarray:
    """(rows, 1 + len(HAR_LAGS)): a constant and trailing means of `series` within each ticker."""
    out = np.full((len(series), 1 + len(HAR_LAGS)), np.nan)
    out[:, 0] = 1.0
    for k, lag in enumerate(HAR_LAGS, start=1):
        out[:, k] = pd.Series(series).groupby(ticker).transform(lambda s, n=lag: s.rolling(n).mean()).to_numpy()
    return out


def baseline_forecasts(dm: PriceDataModule, stage: str) -> dict[str, np.ndarray]:
    """Baseline forecasts for every window of split `stage` (ends in `dm.dataset(stage).ends`)."""
    frame = dm.frames["fit"]
    series = frame[f"f:{dm.target}"].to_numpy()
    ends = dm.dataset(stage).ends.numpy()
    train_ends = dm.dataset("train").ends.numpy()
    actual = dm.dataset(stage).y[ends].numpy() * dm.dataset(stage).target_scale[ends, None].numpy()
    actual += dm.dataset(stage).target_loc[ends, None].numpy()
    train_y = dm.dataset("train").y
    train_y = train_y[:, -1] if train_y.dim() == 3 else train_y
    train_targets = (
        train_y[train_ends].numpy() * dm.dataset("train").target_scale[train_ends, None].numpy()
        + dm.dataset("train").target_loc[train_ends, None].numpy()
    )
    out = {
        "actual": actual,
        "naive": np.repeat(series[ends, None], dm.horizon, axis=1),
        "mean": np.broadcast_to(train_targets.mean(0), actual.shape).copy(),
    }
    if dm.target in VOLATILITY_TARGETS:
        x = har_regressors(series, frame["ticker"].to_numpy())
        ok = np.isfinite(x[train_ends]).all(1)
        beta, *_ = np.linalg.lstsq(x[train_ends][ok], train_targets[ok], rcond=None)
        har = x[ends] @ beta
        # Windows shorter than the longest lag have no HAR regressors: fall back to naive.
        out["har"] = np.where(np.isfinite(har), har, out["naive"])
    return out


def scores(forecasts: dict[str, np.ndarray], model: np.ndarray | None = None, direction: bool = False) -> pd.DataFrame:
    """MSE, MAE and skill 1 - MSE / MSE(baseline) per forecast, in original units.

    direction=True (return targets) adds the share of correct signs, to compare with
    the share of up days (`up_share`): what always forecasting "up" would score.
    """
    actual = forecasts["actual"]
    rows = {name: f for name, f in forecasts.items() if name != "actual"}
    if model is not None:
        rows = {"model": model, **rows}
    mse = {n: float(np.mean((f - actual) ** 2)) for n, f in rows.items()}
    table = pd.DataFrame({"mse": mse, "mae": {n: float(np.mean(np.abs(f - actual))) for n, f in rows.items()}})
    for base in ("naive", "mean", "har"):
        if base in rows:
            table[f"skill_vs_{base}"] = 1 - table["mse"] / mse[base]
    if direction:
        table["hit_rate"] = {n: float(np.mean(np.sign(f) == np.sign(actual))) for n, f in rows.items()}
        table["up_share"] = float(np.mean(actual > 0))
    return table
