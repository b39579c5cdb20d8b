"""Read a price file (CSV or Parquet, long format) and validate it.

Everything a user can get wrong in a file is caught here and reported as one
`ForecastingError` line naming the file, column and line (CSV, 1-based with the
header as line 1, blank lines counted) or row (Parquet, 1-based).

Times: time-zone-aware stamps (any offsets, mixed too) are converted to
`timezone` (data.timezone, default UTC) and kept as naive wall-clock times in
that zone; naive stamps are taken to be in it already. Integer dates are refused
unless `date_format` says how to read them ("%Y%m%d", epoch_s, epoch_ms).
"""

import difflib
import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd

from forecasting.errors import ForecastingError

CSV_SUFFIXES = {".csv", ".txt", ".gz"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
# Price columns that log transforms divide by: zero or negative is an error.
PRICE_COLUMNS = ("open", "high", "low", "close")


def read_frame(path: str | Path, text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV or Parquet file as-is (`text_columns` of a CSV as strings); a bad file gives a ForecastingError."""
    path = Path(path)
    if path.is_dir():
        raise ForecastingError(
            f"{path}: is a folder; set data.path (or data.predict_path) to a CSV or Parquet file in it"
        )
    if not path.is_file():
        raise ForecastingError(f"{path}: file not found; set data.path (or data.predict_path) to a CSV or Parquet file")
    suffix = path.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES:
            frame = pd.read_parquet(path)
        elif suffix in CSV_SUFFIXES:
            # No NaN guessing: an empty or "n/a" cell stays text and is reported with its line.
            # Ticker names read as text: "01", "1" and "1.0" are three tickers, not one number.
            header = pd.read_csv(path, encoding="utf-8", nrows=0).columns
            dtype = {c: str for c in text_columns if c in header}
            frame = pd.read_csv(path, encoding="utf-8", keep_default_na=False, dtype=dtype)
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
    """Human position of frame row `index` (0-based, as read) in the file: pandas skips blank
    lines, so count them (only when a message needs a line number)."""
    if Path(path).suffix.lower() in PARQUET_SUFFIXES:
        return f"row {index + 1}"
    try:
        opener = gzip.open if Path(path).suffix.lower() == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            rows = -1  # the header is the first non-blank line
            for number, line in enumerate(f, start=1):
                if line.strip("\r\n"):
                    rows += 1
                    if rows == index + 1:
                        return f"line {number}"
    except OSError:
        pass
    return f"line {index + 2}"


def stamp(time) -> str:
    """A time for messages: the date alone at midnight, else the full timestamp."""
    time = pd.Timestamp(time)
    return str(time.date()) if time == time.normalize() else str(time)


def require_column(frame: pd.DataFrame, column: str, key: str, path: Path) -> None:
    if column in frame.columns:
        return
    near = difflib.get_close_matches(column, [str(c) for c in frame.columns], n=1)
    hint = f"did you mean '{near[0]}'?" if near else f"the file has {list(frame.columns)}"
    raise ForecastingError(f"{path}: no column '{column}' (config key {key}); {hint}")


EPOCH_UNITS = {"epoch_s": "s", "epoch_ms": "ms"}
OFFSET = re.compile(r"(?:Z|[+-]\d\d:?\d\d)$")


def parse_times(
    values: pd.Series, column: str, path: Path, date_format: str | None, timezone: str = "UTC"
) -> pd.Series:
    """Naive timestamps in `timezone` (see the module docstring); one line for anything unreadable."""
    hint = 'set data.date_format: "%Y%m%d" (for 20000301), epoch_s or epoch_ms (seconds/milliseconds since 1970)'
    if pd.api.types.is_bool_dtype(values):
        raise ForecastingError(f"{path}: column '{column}' holds true/false values, not times; check data.time_column")
    numeric = pd.api.types.is_numeric_dtype(values)
    try:
        if date_format in EPOCH_UNITS:
            numbers = pd.to_numeric(values, errors="coerce")
            times = pd.to_datetime(numbers, unit=EPOCH_UNITS[date_format], errors="coerce", utc=True)
        elif numeric and date_format is None:
            raise ForecastingError(
                f"{path}: {where(path, 0)}, column '{column}': the times are numbers ({values.iloc[0]}), which would "
                f"be read as nanoseconds since 1970; {hint}"
            )
        else:
            if numeric:  # 20000301 with date_format "%Y%m%d": parse the digits
                values = values.map(lambda v: str(int(v)) if pd.notna(v) else "")
            try:
                times = pd.to_datetime(values, format=date_format, errors="coerce")
            except ValueError as err:
                if "Mixed timezones" not in str(err) and "mixed time zones" not in str(err).lower():
                    raise
                times = pd.to_datetime(values, format=date_format, errors="coerce", utc=True)
    except ForecastingError:
        raise
    except (ValueError, TypeError, OverflowError) as err:
        key = f"data.date_format {date_format!r}" if date_format else f"column '{column}'"
        raise ForecastingError(f"{path}: {key}: {str(err).splitlines()[0]}; {hint}, or a strftime format") from None
    if not pd.api.types.is_datetime64_any_dtype(times):
        raise ForecastingError(f"{path}: column '{column}' cannot be read as times; {hint}")
    bad = np.flatnonzero(times.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        text = values.astype(str)
        offsets = text.str.strip().str.contains(OFFSET)
        mixed = 0 < int(offsets.sum()) < len(text)
        why = "; some rows carry a UTC offset and some do not: give every row one, or none" if mixed else ""
        raise ForecastingError(
            f"{path}: {where(path, i)}, column '{column}': cannot parse date {values.iloc[i]!r} "
            f"(format {date_format or 'inferred from the first row'}){why}; fix the row or set data.date_format"
        )
    if times.dt.tz is not None:
        times = times.dt.tz_convert(timezone).dt.tz_localize(None)
    return times


def check_timezone(timezone: str) -> None:
    try:
        pd.Timestamp("2000-01-01", tz=timezone)
    except Exception:
        raise ForecastingError(
            f"data.timezone: unknown time zone {timezone!r}; use an IANA name such as UTC or America/New_York"
        ) from None


# Cells that mean "no value here" (handled by data.missing); any other text is an error.
MISSING_TEXT = {"", "na", "n/a", "nan", "null", "none", "inf", "-inf", "+inf", "infinity", "-infinity"}
MISSING_POLICIES = ("error", "ffill", "drop")


def parse_numbers(values: pd.Series, column: str, path: Path, missing: str = "error") -> np.ndarray:
    """Floats, with NaN where a cell is empty, NaN or infinite (an error unless `missing` allows it)."""
    if pd.api.types.is_bool_dtype(values):
        raise ForecastingError(f"{path}: column '{column}' holds true/false values, not numbers; check data.columns")
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


BAD_VALUE_POLICIES = ("error", "missing")
# Values outside these bounds are typing or unit errors, not prices: 1e300 overflows the
# variance features, 1e-300 underflows them.
PRICE_RANGE = (1e-8, 1e12)
MAX_VOLUME = 1e18
EMPTY_TICKERS = {"", "nan", "none", "null", "<na>"}


def bad_rows(out: pd.DataFrame, columns: dict[str, str], max_flat_rows: int | None) -> tuple[np.ndarray, list[str]]:
    """Rows holding present but impossible values, and why (one reason per row, '' if fine).

    NaN cells are not judged here (that is data.missing's job)."""
    n = len(out)
    reasons = np.full(n, "", dtype=object)

    def flag(mask, text, values=None):
        """Give rows in `mask` (not yet flagged) the reason `text`, formatted with the row's value as {v}."""
        for i in np.flatnonzero(np.asarray(mask, dtype=bool) & (reasons == "")):
            reasons[i] = text.format(v=values[i]) if values is not None else text

    for name in [*(p for p in PRICE_COLUMNS if p in columns), *(["volume"] if "volume" in columns else [])]:
        values, column = out[name].to_numpy(), columns[name]
        low, high = (0, MAX_VOLUME) if name == "volume" else PRICE_RANGE
        kind = "volume" if name == "volume" else "price"
        flag(values <= 0, f"column '{column}': {kind} {{v}} is not positive", values)
        flag((values < low) | (values > high), f"column '{column}': {kind} {{v}} is implausible", values)
    if "high" in columns and "low" in columns:
        high, low = out["high"].to_numpy(), out["low"].to_numpy()
        flag(high < low, f"columns '{columns['high']}' < '{columns['low']}': high below low")
        if "close" in columns:
            close, slack = out["close"].to_numpy(), 1e-9 * np.abs(high)
            flag(
                (close > high + slack) | (close < low - slack),
                f"column '{columns['close']}': close outside [low, high]",
            )
    if max_flat_rows and "close" in columns:
        close, ticker = out["close"].to_numpy(), out["ticker"].to_numpy()
        same = np.r_[False, (close[1:] == close[:-1]) & (ticker[1:] == ticker[:-1])]
        run = np.cumsum(~same)  # one id per run of equal closes within a ticker
        size = np.bincount(run)[run]
        # A run of max_flat_rows or more equal closes: every row after its first is suspect.
        flat = same & (size >= max_flat_rows)
        flag(
            flat,
            f"column '{columns['close']}': close unchanged for {max_flat_rows} or more rows "
            "(data.max_flat_rows; null turns this check off)",
        )
    return reasons != "", list(reasons)


def read_prices(
    path: str | Path,
    time_column: str,
    ticker_column: str | None,
    columns: dict[str, str],
    adjust_column: str | None = None,
    date_format: str | None = None,
    missing: str = "error",
    timezone: str = "UTC",
    bad_values: str = "error",
    max_flat_rows: int | None = 20,
    report: dict | None = None,
) -> pd.DataFrame:
    """Read and validate a long-format price file.

    `columns` maps the names the transforms use (open, high, low, close, volume,
    or any other) to the file's column names. Returns a frame with columns
    `time`, `ticker`, `line` (position in the file, for messages) and those
    names, sorted by (ticker, time). Unsorted input is sorted silently.
    `missing`: what to do with empty, NaN or infinite cells: error, ffill (within
    a ticker; rows before its first value are dropped) or drop the row.
    `bad_values`: what to do with present but impossible values (zero or negative
    prices/volumes, high < low, close outside [low, high], a close unchanged for
    `max_flat_rows` rows): error, or missing (hand the row to `missing`).
    `report`: filled with a per-ticker data-quality summary (quality_report()).
    """
    path = Path(path)
    frame = read_frame(path, text_columns=(ticker_column,) if ticker_column else ())
    require_column(frame, time_column, "data.time_column", path)
    if ticker_column is not None:
        require_column(frame, ticker_column, "data.ticker_column", path)
    for name, column in columns.items():
        require_column(frame, column, f"data.columns.{name}", path)
    if adjust_column is not None:
        require_column(frame, adjust_column, "data.adjust_column", path)

    out = pd.DataFrame({"time": parse_times(frame[time_column], time_column, path, date_format, timezone)})
    if ticker_column:
        raw = frame[ticker_column]
        names = raw.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip())
        empty = np.flatnonzero(names.str.lower().isin(EMPTY_TICKERS).to_numpy())
        if len(empty):
            i = int(empty[0])
            raise ForecastingError(
                f"{path}: {where(path, i)}, column '{ticker_column}': empty ticker name {raw.iloc[i]!r}; "
                "name every row's ticker, or set data.ticker_column: null for a file holding one series"
            )
        out["ticker"] = names.to_numpy()
    else:
        out["ticker"] = "series"
    out["line"] = np.arange(len(frame))
    numeric = {**columns, **({"_adjust": adjust_column} if adjust_column else {})}
    for name, column in numeric.items():
        out[name] = parse_numbers(frame[column], column, path, missing)

    out = out.sort_values(["ticker", "time"], kind="stable").reset_index(drop=True)
    dup = out.duplicated(["ticker", "time"]).to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ForecastingError(
            f"{path}: {where(path, int(out['line'].iloc[i]))}: duplicate date {stamp(out['time'].iloc[i])} "
            f"for ticker '{out['ticker'].iloc[i]}'; each (ticker, time) must appear once"
        )
    flagged, reasons = bad_rows(out, columns, max_flat_rows)
    if flagged.any() and bad_values == "error":
        i = int(np.flatnonzero(flagged)[0])
        raise ForecastingError(
            f"{path}: {where(path, int(out['line'].iloc[i]))}, {reasons[i]} (ticker '{out['ticker'].iloc[i]}', "
            f"{stamp(out['time'].iloc[i])}); fix the row, or set data.bad_values: missing "
            "to hand such rows to data.missing"
        )
    absent = out[list(numeric)].isna().any(axis=1).to_numpy()
    out.loc[flagged, list(numeric)] = np.nan
    before = out[list(numeric)].isna().any(axis=1).to_numpy()
    if missing == "ffill":
        out[list(numeric)] = out.groupby("ticker", sort=False)[list(numeric)].ffill()
    kept = ~out[list(numeric)].isna().any(axis=1).to_numpy()
    if report is not None:
        report.update(summarise(out, absent, flagged, reasons, before & kept, ~kept))
    if missing in ("ffill", "drop"):
        out = out[kept].reset_index(drop=True)
        if len(out) == 0:
            raise ForecastingError(f"{path}: no row is left after data.missing: {missing}")

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


def summarise(out, absent, flagged, reasons, filled, dropped, first: int = 3) -> dict:
    """Per ticker: rows read, cells missing, rows flagged, filled and dropped, and the first issues."""
    summary = {}
    for ticker, index in out.groupby("ticker", sort=False).indices.items():
        issues = [
            f"{stamp(out['time'].iat[i])} {reasons[i] if flagged[i] else 'missing value'}"
            for i in index
            if flagged[i] or absent[i]
        ]
        summary[str(ticker)] = {
            "rows": len(index), "missing": int(absent[index].sum()), "flagged": int(flagged[index].sum()),
            "filled": int(filled[index].sum()), "dropped": int(dropped[index].sum()), "first": issues[:first],
        }  # fmt: skip
    return summary


def quality_report(path, summary: dict, bad_values: str, missing: str) -> str:
    """A short table of what was missing, flagged, filled or dropped, per ticker."""
    rows = sum(s["rows"] for s in summary.values())
    head = f"data quality ({path}): {len(summary)} tickers, {rows} rows; "
    head += f"data.bad_values={bad_values}, data.missing={missing}"
    issues = {t: s for t, s in summary.items() if s["missing"] or s["flagged"]}
    if not issues:
        return head + "; nothing missing, flagged, filled or dropped"
    lines = [
        head,
        f"  {'ticker':<12} {'rows':>7} {'missing':>7} {'flagged':>7} {'filled':>7} {'dropped':>7}  first issues",
    ]
    for ticker, s in issues.items():
        lines.append(
            f"  {ticker:<12} {s['rows']:>7} {s['missing']:>7} {s['flagged']:>7} {s['filled']:>7} {s['dropped']:>7}  "
            + "; ".join(s["first"])
        )
    return "\n".join(lines)
