"""Read a price file (CSV or Parquet, long format) and validate it.

Everything a user can get wrong in a file is caught here and reported as one
`ForecastingError` line naming the file, column and line (CSV, 1-based with the
header as line 1) or row (Parquet, 1-based).
"""

import difflib
from pathlib import Path

import numpy as np
import pandas as pd

from forecasting.errors import ForecastingError

CSV_SUFFIXES = {".csv", ".txt", ".gz"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
# Price columns that log transforms divide by: zero or negative is an error.
PRICE_COLUMNS = ("open", "high", "low", "close")


def read_frame(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file as-is; a bad file gives a ForecastingError."""
    path = Path(path)
    if not path.is_file():
        raise ForecastingError(f"{path}: file not found; set data.path (or data.predict_path) to a CSV or Parquet file")
    suffix = path.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES:
            frame = pd.read_parquet(path)
        elif suffix in CSV_SUFFIXES:
            # No NaN guessing: an empty or "n/a" cell stays text and is reported with its line.
            frame = pd.read_csv(path, encoding="utf-8", keep_default_na=False)
        else:
            raise ForecastingError(f"{path}: unknown file type '{suffix}'; use .csv or .parquet")
    except pd.errors.EmptyDataError:
        raise ForecastingError(f"{path}: file is empty; expected a header line and one row per date") from None
    except (UnicodeDecodeError, pd.errors.ParserError, OSError, ValueError) as err:
        if isinstance(err, ForecastingError):
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ForecastingError(
            f"{path}: cannot be read as {suffix[1:]} ({first}); is it a UTF-8 CSV or a Parquet file?"
        ) from None
    if len(frame) == 0:
        raise ForecastingError(f"{path}: has a header but no rows")
    return frame


def where(path: Path, index: int) -> str:
    """Human position of frame row `index` (0-based, as read) in the file."""
    if Path(path).suffix.lower() in PARQUET_SUFFIXES:
        return f"row {index + 1}"
    return f"line {index + 2}"


def require_column(frame: pd.DataFrame, column: str, key: str, path: Path) -> None:
    if column in frame.columns:
        return
    near = difflib.get_close_matches(column, [str(c) for c in frame.columns], n=1)
    hint = f"did you mean '{near[0]}'?" if near else f"the file has {list(frame.columns)}"
    raise ForecastingError(f"{path}: no column '{column}' (config key {key}); {hint}")


def parse_times(values: pd.Series, column: str, path: Path, date_format: str | None) -> pd.Series:
    times = pd.to_datetime(values, format=date_format, errors="coerce")
    bad = np.flatnonzero(times.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise ForecastingError(
            f"{path}: {where(path, i)}, column '{column}': cannot parse date {values.iloc[i]!r} "
            f"(format {date_format or 'inferred from the first row'}); fix the row or set data.date_format"
        )
    return times


# Cells that mean "no value here" (handled by data.missing); any other text is an error.
MISSING_TEXT = {"", "na", "n/a", "nan", "null", "none", "inf", "-inf", "+inf", "infinity", "-infinity"}
MISSING_POLICIES = ("error", "ffill", "drop")


def parse_numbers(values: pd.Series, column: str, path: Path, missing: str = "error") -> np.ndarray:
    """Floats, with NaN where a cell is empty, NaN or infinite (an error unless `missing` allows it)."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    absent = values.isna().to_numpy() | np.isinf(numbers)
    if not pd.api.types.is_numeric_dtype(values):
        absent |= values.astype(str).str.strip().str.lower().isin(MISSING_TEXT).to_numpy()
    garbage = np.flatnonzero(~np.isfinite(numbers) & ~absent)
    if len(garbage):
        i = int(garbage[0])
        raise ForecastingError(
            f"{path}: {where(path, i)}, column '{column}': '{values.iloc[i]}' is not a number; fix or remove the row"
        )
    if missing == "error" and absent.any():
        i = int(np.flatnonzero(absent)[0])
        raise ForecastingError(
            f"{path}: {where(path, i)}, column '{column}': value '{values.iloc[i]}' is missing or not finite; "
            "fix the row, or set data.missing: ffill (carry the last value forward) or drop (skip such rows)"
        )
    numbers[absent] = np.nan
    return numbers


def read_prices(
    path: str | Path,
    time_column: str,
    ticker_column: str | None,
    columns: dict[str, str],
    adjust_column: str | None = None,
    date_format: str | None = None,
    missing: str = "error",
) -> pd.DataFrame:
    """Read and validate a long-format price file.

    `columns` maps the names the transforms use (open, high, low, close, volume,
    or any other) to the file's column names. Returns a frame with columns
    `time`, `ticker`, `line` (position in the file, for messages) and those
    names, sorted by (ticker, time). Unsorted input is sorted silently.
    `missing`: what to do with empty, NaN or infinite cells: error, ffill (within
    a ticker; rows before its first value are dropped) or drop the row.
    """
    path = Path(path)
    frame = read_frame(path)
    require_column(frame, time_column, "data.time_column", path)
    if ticker_column is not None:
        require_column(frame, ticker_column, "data.ticker_column", path)
    for name, column in columns.items():
        require_column(frame, column, f"data.columns.{name}", path)
    if adjust_column is not None:
        require_column(frame, adjust_column, "data.adjust_column", path)

    out = pd.DataFrame({"time": parse_times(frame[time_column], time_column, path, date_format)})
    out["ticker"] = frame[ticker_column].astype(str).to_numpy() if ticker_column else "series"
    out["line"] = np.arange(len(frame))
    numeric = {**columns, **({"_adjust": adjust_column} if adjust_column else {})}
    for name, column in numeric.items():
        out[name] = parse_numbers(frame[column], column, path, missing)

    out = out.sort_values(["ticker", "time"], kind="stable").reset_index(drop=True)
    dup = out.duplicated(["ticker", "time"]).to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ForecastingError(
            f"{path}: {where(path, int(out['line'].iloc[i]))}: duplicate date {out['time'].iloc[i].date()} "
            f"for ticker '{out['ticker'].iloc[i]}'; each (ticker, date) must appear once"
        )
    if missing == "ffill":
        out[list(numeric)] = out.groupby("ticker", sort=False)[list(numeric)].ffill()
    if missing in ("ffill", "drop"):
        out = out.dropna(subset=list(numeric)).reset_index(drop=True)
        if len(out) == 0:
            raise ForecastingError(f"{path}: no row is left after data.missing: {missing}")

    for name, column in columns.items():
        if name in PRICE_COLUMNS and (out[name] <= 0).any():
            i = int(np.flatnonzero(out[name].to_numpy() <= 0)[0])
            raise ForecastingError(
                f"{path}: {where(path, int(out['line'].iloc[i]))}, column '{column}': price {out[name].iloc[i]} "
                "is not positive; log transforms need prices > 0: fix or remove the row"
            )
    if adjust_column is not None:
        if "close" in columns:
            # Split/dividend adjustment: scale prices by adj_close/close, volume by its inverse,
            # so a 2:1 split is neither a -50% return nor a doubling of volume.
            factor = out["_adjust"].to_numpy() / out["close"].to_numpy()
            for name in PRICE_COLUMNS:
                if name in columns:
                    out[name] = out[name] * factor
            if "volume" in columns:
                out["volume"] = out["volume"] / factor
        out = out.drop(columns="_adjust")
    return out
