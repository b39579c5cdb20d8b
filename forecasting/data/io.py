"""Read a price file (CSV, Parquet, or a folder of Parquet files; long format) and validate it.

Only the columns the config names are read (source.py: pyarrow datasets, the CSV's Parquet
cache); checks run on NumPy arrays, without copies of the whole frame (docs/data.md).

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
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from forecasting.data import source
from forecasting.errors import ForecastingError

CSV_SUFFIXES = {".csv", ".txt", ".gz"}
PARQUET_SUFFIXES = source.PARQUET_SUFFIXES
# Price columns that log transforms divide by: zero or negative is an error.
PRICE_COLUMNS = ("open", "high", "low", "close")


def read_frame(path: str | Path, text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV or Parquet file as-is (`text_columns` of a CSV as text); a bad file gives a ForecastingError."""
    return read_table(path, None, text_columns)[0]


def read_table(
    path: str | Path,
    columns: list[str] | None = None,
    text_columns: tuple[str, ...] = (),
    cache_dir: str | Path | None = None,
    tickers: tuple | None = None,
    narrow: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, list[str], np.ndarray | None, source.CsvCache | None]:
    """The named `columns` (all if None) of a CSV, a Parquet file or a folder of Parquet files, with
    `text_columns` as Categoricals; see source.py. Returns the frame, the file's column names, each
    row's position in the file (None: all rows, in order) and the pending CSV cache (or None).
    `tickers`: (column, names): read only those tickers' rows. `narrow`: float columns of a Parquet
    source to read as float32 (source.read_parquet)."""
    path = Path(path)
    if path.is_dir() and not source.parquet_files(path):
        raise ForecastingError(
            f"{path}: is a folder; set data.path (or data.predict_path) to a CSV or Parquet file in it "
            "(or to a folder of Parquet files)"
        )
    if not path.exists():
        raise ForecastingError(f"{path}: file not found; set data.path (or data.predict_path) to a CSV or Parquet file")
    suffix = ".parquet" if path.is_dir() else path.suffix.lower()
    cache = None
    try:
        if suffix in PARQUET_SUFFIXES:
            frame, names, positions = source.read_parquet(path, columns, text_columns, tickers, narrow)
        elif suffix in CSV_SUFFIXES:
            cached = source.cache_path(path, Path(cache_dir), text_columns) if cache_dir is not None else None
            if cached is not None and cached.is_file():
                frame, names, positions = source.read_parquet(cached, columns, text_columns, tickers, narrow)
            else:
                # No NaN guessing: an empty or "n/a" cell stays text and is reported with its line.
                # Ticker names read as text: "01", "1" and "1.0" are three tickers, not one number.
                header = pd.read_csv(path, encoding="utf-8", nrows=0).columns
                dtype = {c: str for c in text_columns if c in header}  # "category" would turn "1.0" into 1.0
                frame = pd.read_csv(path, encoding="utf-8", keep_default_na=False, dtype=dtype)
                for c in dtype:  # one small integer per row, not one string
                    frame[c] = frame[c].astype("category")
                names, positions = [str(c) for c in frame.columns], None
                if cached is not None and len(frame):
                    try:
                        cache = source.CsvCache(frame, cached)
                    except (OSError, ValueError, TypeError):  # an unwritable or unconvertible cache only costs time
                        cache = None
                if columns is not None:
                    frame = frame[[c for c in dict.fromkeys(columns) if c in frame.columns]]
                if tickers is not None and tickers[0] in frame.columns:
                    keep = {str(t).strip() for t in tickers[1]}
                    mask = frame[tickers[0]].astype(str).str.strip().isin(keep).to_numpy()
                    positions = np.flatnonzero(mask)
                    frame = frame[mask].reset_index(drop=True)
        else:
            raise ForecastingError(f"{path}: unknown file type '{suffix}'; use .csv or .parquet")
    except pd.errors.EmptyDataError:
        raise ForecastingError(f"{path}: file is empty; expected a header line and one row per date") from None
    except (UnicodeDecodeError, pd.errors.ParserError, OSError, ValueError, pa.ArrowException) as err:
        if isinstance(err, ForecastingError):
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ForecastingError(
            f"{path}: cannot be read as {suffix[1:]} ({first}); is it a UTF-8 CSV or a Parquet file?"
        ) from None
    if len(frame) == 0:
        if cache is not None:
            cache.discard()
        if positions is not None:
            raise ForecastingError(
                f"{path}: data.tickers names {sorted(map(str, tickers[1]))}, none of them in the file's '{tickers[0]}'"
            )
        raise ForecastingError(f"{path}: has a header but no rows")
    return frame, names, positions, cache


def where(path: Path, index: int) -> str:
    """Human position of frame row `index` (0-based, as read) in the file: pandas skips blank
    lines, so count them (only when a message needs a line number)."""
    if Path(path).suffix.lower() in PARQUET_SUFFIXES or Path(path).is_dir():
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


def require_column(frame: pd.DataFrame | list[str], column: str, key: str, path: Path) -> None:
    """`frame`: a frame, or the file's column names."""
    names = list(frame.columns) if isinstance(frame, pd.DataFrame) else list(frame)
    if column in names:
        return
    near = difflib.get_close_matches(column, [str(c) for c in names], n=1)
    hint = f"did you mean '{near[0]}'?" if near else f"the file has {names}"
    raise ForecastingError(f"{path}: no column '{column}' (config key {key}); {hint}")


EPOCH_UNITS = {"epoch_s": "s", "epoch_ms": "ms"}
OFFSET = re.compile(r"(?:Z|[+-]\d\d:?\d\d)$")


def parse_times(
    values: pd.Series, column: str, path: Path, date_format: str | None, timezone: str = "UTC", line=None
) -> pd.Series:
    """Naive timestamps in `timezone` (see the module docstring); one line for anything unreadable.
    `line`: each value's position in the file (default: its index)."""
    line = np.arange(len(values)) if line is None else line
    hint = 'set data.date_format: "%Y%m%d" (for 20000301), epoch_s or epoch_ms (seconds/milliseconds since 1970)'
    if pd.api.types.is_bool_dtype(values):
        raise ForecastingError(f"{path}: column '{column}' holds true/false values, not times; check data.time_column")
    numeric = pd.api.types.is_numeric_dtype(values)
    try:
        if date_format is None and isinstance(values.dtype, np.dtype) and values.dtype.kind == "M":
            times = values  # already naive times (a Parquet timestamp column): no copy
        elif date_format in EPOCH_UNITS:
            numbers = pd.to_numeric(values, errors="coerce")
            times = pd.to_datetime(numbers, unit=EPOCH_UNITS[date_format], errors="coerce", utc=True)
        elif numeric and date_format is None:
            raise ForecastingError(
                f"{path}: {where(path, int(line[0]))}, column '{column}': the times are numbers ({values.iloc[0]}), "
                f"which would be read as nanoseconds since 1970; {hint}"
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
        if pd.isna(values.iloc[i]):  # an empty cell of a Parquet time column: nothing to parse
            at = where(path, int(line[i]))
            raise ForecastingError(f"{path}: {at}, column '{column}': the time is missing; fill in or remove the row")
        text = values.astype(str)
        offsets = text.str.strip().str.contains(OFFSET)
        mixed = 0 < int(offsets.sum()) < len(text)
        why = "; some rows carry a UTC offset and some do not: give every row one, or none" if mixed else ""
        raise ForecastingError(
            f"{path}: {where(path, int(line[i]))}, column '{column}': cannot parse date {values.iloc[i]!r} "
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


def parse_numbers(
    values: pd.Series, column: str, path: Path, missing: str = "error", line=None, float32: bool = False
) -> np.ndarray:
    """Floats, with NaN where a cell is empty, NaN or infinite (an error unless `missing` allows it).
    `line`: each value's position in the file (default: its index). May be a read-only view of `values`.
    `float32`: float32 values stay float32 (else: float64)."""
    line = np.arange(len(values)) if line is None else line
    if pd.api.types.is_bool_dtype(values):
        raise ForecastingError(f"{path}: column '{column}' holds true/false values, not numbers; check data.columns")
    floats = values.dtype == np.float64 or (float32 and values.dtype == np.float32)
    if floats:  # already floats: a view, no copy (pd.to_numeric would copy)
        numbers = values.to_numpy()
    else:
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    absent = ~np.isfinite(numbers) if floats else values.isna().to_numpy() | np.isinf(numbers)
    if not pd.api.types.is_numeric_dtype(values):
        absent |= values.astype(str).str.strip().str.lower().isin(MISSING_TEXT).to_numpy()
    garbage = np.flatnonzero(~np.isfinite(numbers) & ~absent)
    if len(garbage):
        i = int(garbage[0])
        at = where(path, int(line[i]))
        raise ForecastingError(
            f"{path}: {at}, column '{column}': '{values.iloc[i]}' is not a number; fix or remove the row"
        )
    if missing == "error" and absent.any():
        i = int(np.flatnonzero(absent)[0])
        at = where(path, int(line[i]))
        raise ForecastingError(
            f"{path}: {at}, column '{column}': value '{values.iloc[i]}' is missing or not finite; "
            "fix the row, or set data.missing: ffill (carry the last value forward) or drop (skip such rows)"
        )
    if absent.any():
        numbers = np.where(absent, np.nan, numbers)
    return numbers


BAD_VALUE_POLICIES = ("error", "missing")
# Values outside these bounds are typing or unit errors, not prices: 1e300 overflows the
# variance features, 1e-300 underflows them.
PRICE_RANGE = (1e-8, 1e12)
MAX_VOLUME = 1e18
EMPTY_TICKERS = {"", "nan", "none", "null", "<na>"}


CHECK_ROWS = 1 << 20  # rows at a time in the checks that need float temporaries


def bad_rows(
    out: dict[str, np.ndarray], columns: dict[str, str], max_flat_rows: int | None
) -> tuple[np.ndarray, "Callable[[int], str]"]:
    """Rows holding present but impossible values, and a function giving the reason for such a row.

    `out`: name -> values, `ticker` -> integer ids. NaN cells are not judged here (that is data.missing's job).
    Reasons are kept as one small integer per row and formatted only for rows a message names."""
    n = len(out["ticker"])
    which = np.zeros(n, dtype=np.int8)  # 0: fine, k: texts[k - 1]
    texts: list[tuple[str, np.ndarray | None]] = []

    def flag(mask, text, values=None):
        """Give rows in `mask` (not yet flagged) the reason `text`, formatted with the row's value as {v}."""
        mask = np.asarray(mask, dtype=bool) & (which == 0)
        if mask.any():
            texts.append((text, values))
            which[mask] = len(texts)

    for name in [*(p for p in PRICE_COLUMNS if p in columns), *(["volume"] if "volume" in columns else [])]:
        values, column = out[name], columns[name]
        low, high = (0, MAX_VOLUME) if name == "volume" else PRICE_RANGE
        kind = "volume" if name == "volume" else "price"
        flag(values <= 0, f"column '{column}': {kind} {{v}} is not positive", values)
        flag((values < low) | (values > high), f"column '{column}': {kind} {{v}} is implausible", values)
    if "high" in columns and "low" in columns:
        high, low = out["high"], out["low"]
        flag(high < low, f"columns '{columns['high']}' < '{columns['low']}': high below low")
        if "close" in columns:
            close, outside = out["close"], np.empty(n, dtype=bool)
            for a in range(0, n, CHECK_ROWS):  # a block at a time: no float temporaries of the file's size
                c, h, lo = close[a : a + CHECK_ROWS], high[a : a + CHECK_ROWS], low[a : a + CHECK_ROWS]
                slack = 1e-9 * np.abs(h)
                outside[a : a + CHECK_ROWS] = (c > h + slack) | (c < lo - slack)
            flag(outside, f"column '{columns['close']}': close outside [low, high]")
            del outside
    if max_flat_rows and "close" in columns:
        flag(
            flat_runs(out["close"], out["ticker"], max_flat_rows),
            f"column '{columns['close']}': close unchanged for {max_flat_rows} or more rows "
            "(data.max_flat_rows; null turns this check off)",
        )

    def reason(i: int) -> str:
        if which[i] == 0:
            return ""
        text, values = texts[which[i] - 1]
        return text.format(v=values[i]) if values is not None else text

    return which != 0, reason


def flat_runs(close: np.ndarray, ticker: np.ndarray, length: int) -> np.ndarray:
    """Rows after the first of a run of `length` or more equal closes within a ticker (a boolean mask).
    A block at a time with `length` rows of overlap each side: a run that leaves the widened block
    already spans more than `length` rows inside it, so each block's own rows are judged right."""
    n = len(close)
    out = np.zeros(n, dtype=bool)
    for a in range(0, n, CHECK_ROWS):
        lo, hi = max(a - length, 0), min(a + CHECK_ROWS + length, n)
        c, t = close[lo:hi], ticker[lo:hi]
        same = np.r_[False, (c[1:] == c[:-1]) & (t[1:] == t[:-1])]
        run = np.cumsum(~same, dtype=np.int32)  # one id per run of equal closes in the block
        flat = same & (np.bincount(run) >= length)[run]
        out[a : min(a + CHECK_ROWS, n)] = flat[a - lo : a - lo + min(CHECK_ROWS, n - a)]
    return out


def _any_nan(arrays) -> np.ndarray:
    out = None
    for values in arrays:
        out = np.isnan(values) if out is None else out | np.isnan(values)
    return out


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
    cache_dir: str | Path | None = None,
    tickers: list | None = None,
    pending: list | None = None,
    narrow: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Read and validate a long-format price file.

    `columns` maps the names the transforms use (open, high, low, close, volume,
    or any other) to the file's column names. Returns a frame with columns
    `time`, `ticker` (a Categorical with sorted categories), `line` (position in
    the file, for messages) and those names (float64), sorted by (ticker, time).
    Unsorted input is sorted silently. Only the named columns are read.
    `missing`: what to do with empty, NaN or infinite cells: error, ffill (within
    a ticker; rows before its first value are dropped) or drop the row.
    `bad_values`: what to do with present but impossible values (zero or negative
    prices/volumes, high < low, close outside [low, high], a close unchanged for
    `max_flat_rows` rows): error, or missing (hand the row to `missing`).
    `report`: filled with a per-ticker data-quality summary (quality_report()).
    `cache_dir`: where a CSV's Parquet cache goes (source.py; None: no cache). `tickers`: read
    only these tickers' rows. `pending`: a list that receives the CSV cache to `commit()` once the
    caller's own checks pass (None: committed here). `narrow`: names (not prices or volume) returned
    as float32 right after their own checks (a column only used raw as a float32 feature: half the
    memory while the rest is checked).
    """
    path = Path(path)
    numeric = {**columns, **({"_adjust": adjust_column} if adjust_column else {})}
    wanted = [time_column, *([ticker_column] if ticker_column else []), *numeric.values()]
    only = (ticker_column, list(tickers)) if tickers is not None and ticker_column else None
    narrow = set(narrow) - {*PRICE_COLUMNS, "volume", "_adjust"}  # the row checks read those in float64
    uses = Counter([time_column, ticker_column, *numeric.values()])
    narrow = {n for n in narrow if n in numeric and uses[numeric[n]] == 1}  # its file column is its alone
    frame, names, positions, cache = read_table(
        path, wanted, (ticker_column,) if ticker_column else (), cache_dir, only, tuple(numeric[n] for n in narrow)
    )  # fmt: skip
    box = [frame]  # _validate takes the frame out: its raw columns are freed as soon as they are parsed
    del frame
    try:
        out = _validate(
            path, box, names, positions, time_column, ticker_column, columns, adjust_column, date_format,
            missing, timezone, bad_values, max_flat_rows, report, narrow,
        )  # fmt: skip
    except BaseException:
        if cache is not None:
            cache.discard()
        raise
    if cache is not None:
        pending.append(cache) if pending is not None else cache.commit()
    return out


def _validate(
    path, box, names, positions, time_column, ticker_column, columns, adjust_column, date_format,
    missing, timezone, bad_values, max_flat_rows, report, narrow=(),
) -> pd.DataFrame:  # fmt: skip
    frame = box.pop()  # the only reference: each raw column is dropped once parsed
    require_column(names, time_column, "data.time_column", path)
    if ticker_column is not None:
        require_column(names, ticker_column, "data.ticker_column", path)
    for name, column in columns.items():
        require_column(names, column, f"data.columns.{name}", path)
    if adjust_column is not None:
        require_column(names, adjust_column, "data.adjust_column", path)

    n = len(frame)
    line_type = np.int32 if n < 2**31 else np.int64  # positions in the file, for messages
    line = np.arange(n, dtype=line_type) if positions is None else positions.astype(line_type, copy=False)
    time = parse_times(frame[time_column], time_column, path, date_format, timezone, line).to_numpy()
    if time_column not in (ticker_column, *columns.values(), adjust_column):
        frame = frame.drop(columns=[time_column])  # the file's times: parsed, no longer needed
        source.release()
    if ticker_column:
        raw = frame[ticker_column]
        if not isinstance(raw.dtype, pd.CategoricalDtype):
            raw = raw.astype("category")
        # Clean the (few) distinct names, not every row: strip, then give equal names one sorted id.
        stripped = [str(v).strip() for v in raw.cat.categories]  # categories are never null
        labels = np.array(sorted(set(stripped)), dtype=object)
        remap = np.searchsorted(labels, np.array(stripped, dtype=object)).astype(np.int32)
        raw_codes = raw.cat.codes.to_numpy()
        empty_label = np.array([t.lower() in EMPTY_TICKERS for t in stripped] + [True])  # [-1]: a null cell
        empty = np.flatnonzero(empty_label[raw_codes])
        if len(empty):
            i = int(empty[0])
            value = raw.iloc[i]
            value = None if value is None or (isinstance(value, float) and np.isnan(value)) else value
            raise ForecastingError(
                f"{path}: {where(path, int(line[i]))}, column '{ticker_column}': empty ticker name {value!r}; "
                "name every row's ticker, or set data.ticker_column: null for a file holding one series"
            )
        codes = remap[raw_codes]  # int32, as remap
        del raw, raw_codes
        if ticker_column not in (*columns.values(), adjust_column):
            frame = frame.drop(columns=[ticker_column])
            source.release()
    else:
        labels, codes = np.array(["series"], dtype=object), np.zeros(n, dtype=np.int32)
    numeric = {**columns, **({"_adjust": adjust_column} if adjust_column else {})}
    left = Counter(numeric.values())  # names still to parse per file column
    values = {}
    for name, column in numeric.items():
        left[column] -= 1
        raw = frame[column] if left[column] else frame.pop(column)  # popped: freed once parsed
        values[name] = parse_numbers(raw, column, path, missing, line, float32=name in narrow)
        del raw
        if name in narrow and values[name].dtype != np.float32:  # a CSV's column, or too big for float32
            with np.errstate(over="ignore"):  # beyond float32: infinite, refused with its row by the data module
                values[name] = values[name].astype(np.float32)
            source.release()  # the float64 column, if Arrow held it
    del frame  # the file's columns: only parsed copies (or views) live on

    # Sort by (ticker, time), stable; most files already are, and then nothing moves.
    ordered = bool(np.all((codes[1:] > codes[:-1]) | ((codes[1:] == codes[:-1]) & (time[1:] >= time[:-1]))))
    if not ordered:
        order = np.lexsort((time, codes))
        time, codes, line = time[order], codes[order], line[order]
        values = {name: v[order] for name, v in values.items()}
        del order
    same_ticker = codes[1:] == codes[:-1]
    dup = np.flatnonzero(same_ticker & (time[1:] == time[:-1]))
    if len(dup):
        i = int(dup[0]) + 1
        raise ForecastingError(
            f"{path}: {where(path, int(line[i]))}: duplicate date {stamp(time[i])} "
            f"for ticker '{labels[codes[i]]}'; each (ticker, time) must appear once"
        )
    flagged, reason = bad_rows({**values, "ticker": codes}, columns, max_flat_rows)
    if flagged.any() and bad_values == "error":
        i = int(np.flatnonzero(flagged)[0])
        raise ForecastingError(
            f"{path}: {where(path, int(line[i]))}, {reason(i)} (ticker '{labels[codes[i]]}', "
            f"{stamp(time[i])}); fix the row, or set data.bad_values: missing "
            "to hand such rows to data.missing"
        )
    absent = _any_nan(values.values())
    if flagged.any():
        for name in values:
            values[name] = np.where(flagged, np.nan, values[name])
    before = _any_nan(values.values()) if flagged.any() else absent
    if missing == "ffill" and before.any():
        values = {name: pd.Series(v).groupby(codes, sort=False).ffill().to_numpy() for name, v in values.items()}
    kept = ~_any_nan(values.values())
    if report is not None:
        report.update(summarise(time, codes, labels, absent, flagged, reason, before & kept, ~kept))
    if missing in ("ffill", "drop") and not kept.all():
        time, codes, line = time[kept], codes[kept], line[kept]
        values = {name: v[kept] for name, v in values.items()}
        if len(time) == 0:
            raise ForecastingError(f"{path}: no row is left after data.missing: {missing}")

    if adjust_column is not None:
        adjust = values.pop("_adjust")
        if "close" in columns:
            # Split/dividend adjustment: scale prices by adj_close/close, volume by its inverse,
            # so a 2:1 split is neither a -50% return nor a doubling of volume.
            factor = adjust / values["close"]
            for name in PRICE_COLUMNS:
                if name in columns:
                    values[name] = values[name] * factor
            if "volume" in columns:
                values["volume"] = values["volume"] / factor
    ticker = pd.Categorical.from_codes(codes, categories=pd.Index(labels, dtype=object))
    out = {"time": time, "ticker": ticker, "line": line, **values}
    return pd.DataFrame(out, copy=False)


def summarise(time, codes, labels, absent, flagged, reason, filled, dropped, first: int = 3) -> dict:
    """Per ticker (rows sorted by ticker): rows read, cells missing, rows flagged, filled and dropped,
    and the first issues."""
    counts = {k: np.bincount(codes[v], minlength=len(labels)) for k, v in
              {"missing": absent, "flagged": flagged, "filled": filled, "dropped": dropped}.items()}  # fmt: skip
    rows = np.zeros(len(labels), dtype=np.int64)
    for a in range(0, len(codes), CHECK_ROWS):  # bincount takes int64: a block at a time
        rows += np.bincount(codes[a : a + CHECK_ROWS], minlength=len(labels))
    present = np.flatnonzero(rows)
    issues: dict[int, list[str]] = {}
    for i in np.flatnonzero(flagged | absent):
        found = issues.setdefault(int(codes[i]), [])
        if len(found) < first:
            found.append(f"{stamp(time[i])} {reason(i) if flagged[i] else 'missing value'}")
    return {
        str(labels[c]): {"rows": int(rows[c]), **{k: int(v[c]) for k, v in counts.items()}, "first": issues.get(c, [])}
        for c in map(int, present)
    }


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
