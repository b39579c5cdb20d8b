"""Named daily transforms of one price series: pure functions, used as features and targets.

A transform takes the frame of ONE ticker (sorted by time, columns named as in
`data.columns`: open, high, low, close, volume, ...) and returns one float per
row that uses only that row and earlier rows. As a feature, row t is an input
at day t; as a target with horizon H, the data module takes rows t+1..t+H.

Add your own with the decorator, naming the columns it needs and how many rows at the
start of each series it leaves undefined (NaN) by construction (`warmup`, default 0):

    @transform("close", warmup=20)
    def realised_vol_20(f):
        r = np.diff(np.log(f["close"].to_numpy()), prepend=np.nan)
        return pd.Series(r).rolling(20).std().to_numpy()    # first 20 rows NaN

then use it as `data.features: [..., realised_vol_20]` or `data.target: realised_vol_20`.
A NaN or Inf after the warm-up rows is an error naming the file's line. Windows never
include warm-up rows. Any name that is not a transform but a column in `data.columns`
is used raw. Define it in this file, or in a file of your own, say `my_features.py` next
to `configs/`, and name it by its dotted path: `data.features: [log_return, my_features.realised_vol_20]`
(the module is imported when the config is read; its decorators register the transforms).
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Transform:
    fn: Callable[[pd.DataFrame], np.ndarray]
    columns: tuple[str, ...]
    # Rows at the start of each series that are NaN by construction (a diff has one).
    warmup: int = 0
    # Row t depends on rows t - warmup..t only: the data module may then compute it over many
    # tickers at once and set each ticker's first `warmup` rows to NaN (the built-in transforms).
    # Your own transforms always get one ticker's frame.
    rowwise: bool = False


TRANSFORMS: dict[str, Transform] = {}

# Floor for a daily variance before the log: a zero-range day (trading halt,
# stale quote) would give log(0) = -inf. 1e-8 is a 0.01% daily volatility.
VARIANCE_FLOOR = 1e-8


def transform(*columns: str, warmup: int = 0, rowwise: bool = False):
    def register(fn):
        TRANSFORMS[fn.__name__] = Transform(fn, columns, warmup, rowwise)
        return fn

    return register


def _diff_log(values: np.ndarray) -> np.ndarray:
    out = np.full(len(values), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[1:] = np.diff(np.log(values))
    return out


@transform("close", warmup=1, rowwise=True)
def log_return(f: pd.DataFrame) -> np.ndarray:
    """log(close_t / close_{t-1}): the stationary version of a price."""
    return _diff_log(f["close"].to_numpy())


@transform("open", "high", "low", "close", rowwise=True)
def gk_log_var(f: pd.DataFrame) -> np.ndarray:
    """log of the Garman-Klass (1980) daily variance from open/high/low/close.

    0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2 is 7x more efficient than a squared
    return; the log makes it roughly Gaussian, which MSE likes.
    """
    hl = np.log(f["high"].to_numpy() / f["low"].to_numpy())
    co = np.log(f["close"].to_numpy() / f["open"].to_numpy())
    var = 0.5 * hl**2 - (2 * np.log(2) - 1) * co**2
    return np.log(np.maximum(var, VARIANCE_FLOOR))


@transform("high", "low", rowwise=True)
def log_range(f: pd.DataFrame) -> np.ndarray:
    """log(high / low): the simplest range-based volatility proxy."""
    return np.log(f["high"].to_numpy() / f["low"].to_numpy())


@transform("volume", warmup=1, rowwise=True)
def log_volume_change(f: pd.DataFrame) -> np.ndarray:
    """log(volume_t / volume_{t-1}); a zero volume makes it infinite (an error)."""
    return _diff_log(f["volume"].to_numpy())


def load(name: str) -> bool:
    """Make a dotted name ('my_features.realised_vol_20') known by importing its module; True if
    it is a transform afterwards. The transform is registered under the dotted name too."""
    if name in TRANSFORMS:
        return True
    module, _, attr = name.rpartition(".")
    if not module:
        return False
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return False
    if fn.__name__ in TRANSFORMS and TRANSFORMS[fn.__name__].fn is fn:
        TRANSFORMS[name] = TRANSFORMS[fn.__name__]
    return name in TRANSFORMS


def required_columns(names: list[str]) -> list[str]:
    """Canonical columns the named transforms (or raw columns) need."""
    needed: list[str] = []
    for name in names:
        for column in TRANSFORMS[name].columns if name in TRANSFORMS else (name,):
            if column not in needed:
                needed.append(column)
    return needed


def rowwise(name: str) -> bool:
    """True for a built-in transform or a raw column: computable over many tickers at once."""
    return TRANSFORMS[name].rowwise if name in TRANSFORMS else True


def warmup(name: str) -> int:
    return TRANSFORMS[name].warmup if name in TRANSFORMS else 0


def compute(series: pd.DataFrame, name: str) -> np.ndarray:
    """Transform `name` of one ticker's frame, as float64."""
    if name in TRANSFORMS:
        return np.asarray(TRANSFORMS[name].fn(series), dtype=np.float64)
    return series[name].to_numpy(dtype=np.float64)
