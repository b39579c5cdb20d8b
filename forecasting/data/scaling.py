"""Scaler statistics from parts: per column, fitted from chunks of rows (tickers, DDP ranks) and
combined exactly, so a sharded fit equals the one-process fit.

- standard: count, mean and sum of squared deviations per part, merged with Chan et al.'s
  pairwise formula (a two-pass variance per part, no catastrophic cancellation): equal to
  StandardScaler (population variance, NaN ignored) to about 1e-15, in any order of parts.
- minmax: min and max, exact.
- robust: the median and interquartile range need every value: parts hand over their values
  (one column at a time) and the quantiles are taken of all of them (RobustScaler's definition).

Each statistic is stored as x_scaled = (x - center) / scale, plain floats.
"""

from collections.abc import Callable

import numpy as np

from forecasting.errors import ForecastingError

SCALER_NAMES = ("standard", "robust", "minmax", "none")


CHUNK = 1 << 20  # values at a time: moments of chunks, merged (no float64 copy of a whole column)


def moments(values: np.ndarray) -> np.ndarray:
    """(count, mean, sum of squared deviations, min, max) of the non-NaN values, in float64."""
    if len(values) > CHUNK:
        return merge(moments(values[a : a + CHUNK]) for a in range(0, len(values), CHUNK))
    values = values[~np.isnan(values)].astype(np.float64, copy=False)
    if len(values) == 0:
        return np.array([0.0, 0.0, 0.0, np.inf, -np.inf])
    mean = values.mean()
    return np.array([len(values), mean, float(np.square(values - mean).sum()), values.min(), values.max()])


def merge(parts) -> np.ndarray:
    """Combine moments of disjoint parts into the moments of their union (Chan, Golub, LeVeque 1979)."""
    n, mean, m2, low, high = 0.0, 0.0, 0.0, np.inf, -np.inf
    for part in parts:
        k, part_mean, part_m2, part_low, part_high = (float(v) for v in part)
        if k == 0:
            continue
        delta, total = part_mean - mean, n + k
        mean += delta * k / total
        m2 += part_m2 + delta * delta * n * k / total
        n, low, high = total, min(low, part_low), max(high, part_high)
    return np.array([n, mean, m2, low, high])


def fit(
    name: str,
    columns: list[Callable[[], np.ndarray]],
    labels: list[str],
    where: str,
    gather: Callable[[object], list] | None = None,
) -> tuple[list[float], list[float]]:
    """Fit scaler `name` per column, ignoring NaN, as (center, scale) lists.

    columns[j]() gives this process's values of column j (called when needed, so one column is in
    memory at a time). `gather(obj)` returns every process's `obj` in rank order (None: one process).
    """
    gather = gather or (lambda obj: [obj])
    centers, scales = [], []
    for values_of, label in zip(columns, labels, strict=True):
        values = values_of()
        total = merge(gather(moments(values)))
        count, mean, m2, low, high = total
        if count == 0:
            raise ForecastingError(f"{where}: no training rows to fit the scaler; move data.val_start later")
        if high - low == 0:
            raise ForecastingError(
                f"{where}: '{label}' is constant on the training rows (zero variance); "
                "drop it from data.features or check the file"
            )
        if name == "standard":
            center, scale = mean, float(np.sqrt(m2 / count))
        elif name == "minmax":
            center, scale = low, high - low
        elif name == "robust":
            kept = values[~np.isnan(values)].astype(np.float64)
            everything = np.concatenate(gather(kept))
            q25, q75 = np.percentile(everything, [25, 75])
            center, scale = np.median(everything), q75 - q25
        else:
            center, scale = 0.0, 1.0
        centers.append(float(center))
        scales.append(float(scale) if scale != 0 else 1.0)  # as sklearn: a zero scale leaves the column as is
    return centers, scales
