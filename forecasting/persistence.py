"""Does the model only copy, or only output a flat line? Pure functions of a split's forecasts.

The silent way an LSTM fails on financial data: the loss converges, and the forecasts
are yesterday's value shifted by a day (persistence) or a flat line near the mean.

- best_lag: the lag k in 0..5 at which forecast(t -> t+1) correlates best with the
  actual value at t+1-k. A model that learned something peaks at 0; one that copies
  the last input peaks at 1 (its forecast IS the actual value of one step earlier).
- corr_with_last_input: correlation of the forecast with the last observed value of
  the target series (the naive baseline). Near 1: a copy.
- pred_std_ratio: std(forecast) / std(actual). Below about 0.1: a flat forecast.
"""

import numpy as np

MAX_LAG = 5


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def lag_correlations(rows: np.ndarray, forecast: np.ndarray, actual: np.ndarray, max_lag: int = MAX_LAG) -> np.ndarray:
    """corr(forecast at row r, actual at row r - k) for k = 0..max_lag.

    rows: the row index of each window's last day (consecutive days of a ticker are
    consecutive rows, see the data module), so row r - k is k trading days earlier."""
    order = np.argsort(rows)
    rows, forecast, actual = rows[order], forecast[order], actual[order]
    out = np.zeros(max_lag + 1)
    for k in range(max_lag + 1):
        pos = np.searchsorted(rows, rows - k)
        found = (pos < len(rows)) & (rows[np.minimum(pos, len(rows) - 1)] == rows - k)
        out[k] = _corr(forecast[found], actual[pos[found]])
    return out


def best_lag(rows: np.ndarray, forecast: np.ndarray, actual: np.ndarray) -> tuple[int, float]:
    corrs = lag_correlations(rows, forecast, actual)
    k = int(np.argmax(corrs))
    return k, float(corrs[k])


def corr_with_last_input(forecast: np.ndarray, last_input: np.ndarray) -> float:
    return _corr(forecast, last_input)


def pred_std_ratio(forecast: np.ndarray, actual: np.ndarray) -> float:
    return float(forecast.std() / actual.std()) if actual.std() > 0 else float("nan")
