"""Today's (before the lean path) pipeline, kept verbatim as the reference the lean path must equal.

Copied from forecasting/data/io.py, datamodule.py and baselines.py at commit d49ec4f; only the
names it imports changed, and `tensors` also returns an empty dict of risk baselines (which came
later, forecasting/risk_baselines.py) because the `dataset()` it inherits expects one. Used by
tests/test_lean.py alone.
"""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

from forecasting.baselines import LOG_VARIANCE_TARGETS, har_regressors
from forecasting.data import features as F
from forecasting.data.datamodule import PriceDataModule
from forecasting.data.io import (
    CSV_SUFFIXES,
    EMPTY_TICKERS,
    MAX_VOLUME,
    PARQUET_SUFFIXES,
    PRICE_COLUMNS,
    PRICE_RANGE,
    parse_numbers,
    parse_times,
    require_column,
    stamp,
    where,
)  # fmt: skip
from forecasting.errors import ForecastingError


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


def baselines_fit(series: np.ndarray, ticker: np.ndarray, targets: np.ndarray, train: np.ndarray, target: str) -> dict:
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


def baselines_forecast_rows(series: np.ndarray, ticker: np.ndarray, params: dict, horizon: int) -> dict:
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


def future(values: np.ndarray, series: np.ndarray, horizon: int) -> np.ndarray:
    """(rows, horizon): row t holds values[t+1..t+horizon] of the same series, NaN past its end."""
    out = np.full((len(values), horizon), np.nan)
    for h in range(1, horizon + 1):
        same = series[h:] == series[:-h]
        out[:-h, h - 1] = np.where(same, values[h:], np.nan)
    return out


SCALERS = {"standard": StandardScaler, "robust": RobustScaler, "minmax": MinMaxScaler, "none": None}
STAGES = ("train", "val", "test")


def fit_scaler(name: str, values: np.ndarray, labels: list[str], where: str) -> tuple[list[float], list[float]]:
    """Fit scaler `name` per column, ignoring NaN; return it as (center, scale) lists.

    Every scaler is stored as x_scaled = (x - center) / scale, plain floats, so a
    checkpoint carries it and loads with torch.load(weights_only=True).
    """
    if len(values) == 0 or np.isnan(values).all(axis=0).any():
        raise ForecastingError(f"{where}: no training rows to fit the scaler; move data.val_start later")
    spread = np.nanmax(values, axis=0) - np.nanmin(values, axis=0)
    if (spread == 0).any():
        label = labels[int(np.flatnonzero(spread == 0)[0])]
        raise ForecastingError(
            f"{where}: '{label}' is constant on the training rows (zero variance); "
            "drop it from data.features or check the file"
        )
    if SCALERS[name] is None:
        return [0.0] * values.shape[1], [1.0] * values.shape[1]
    scaler = SCALERS[name]().fit(values)
    if name == "standard":
        center, scale = scaler.mean_, scaler.scale_
    elif name == "robust":
        center, scale = scaler.center_, scaler.scale_
    else:  # minmax: x * scale_ + min_  ==  (x - (-min_ / scale_)) / (1 / scale_)
        center, scale = -scaler.min_ / scaler.scale_, 1 / scaler.scale_
    return [float(v) for v in center], [float(v) for v in scale]


class OldPriceDataModule(PriceDataModule):
    """PriceDataModule with today's load, scaler fit and tensors."""

    def load(self, path: str) -> pd.DataFrame:
        """Validated rows of `path` with feature columns, per-row targets and split labels."""
        report: dict = {}
        frame = read_prices(
            path, self.time_column, self.ticker_column, self.columns, self.adjust_column, self.date_format,
            self.missing, self.timezone, self.bad_values, self.max_flat_rows, report,
        )  # fmt: skip
        self.quality[path] = report
        if self.tickers is not None:
            unknown = sorted(set(map(str, self.tickers)) - set(frame["ticker"]))
            if unknown:
                raise ForecastingError(
                    f"{path}: data.tickers names {unknown}, not in the file's '{self.ticker_column}'"
                )
            frame = frame[frame["ticker"].isin(list(map(str, self.tickers)))].reset_index(drop=True)
        keep = []
        for ticker, rows in frame.groupby("ticker", sort=False):
            if len(rows) < self.window + self.horizon:
                warnings.warn(
                    f"{path}: ticker '{ticker}' has {len(rows)} rows, fewer than data.window + data.horizon "
                    f"= {self.window + self.horizon}; skipping it",
                    stacklevel=2,
                )
            else:
                keep.append(rows)
        if not keep:
            raise ForecastingError(
                f"{path}: no ticker has data.window + data.horizon = {self.window + self.horizon} rows; "
                "use a smaller window or a longer file"
            )
        frame = pd.concat(keep, ignore_index=True)
        # One array per transform, filled per ticker and assigned once (a per-ticker frame.loc
        # assignment costs O(rows) each time: seconds for hundreds of tickers).
        columns = {name: np.full(len(frame), np.nan) for name in dict.fromkeys([*self.features, self.target])}
        for ticker, rows in frame.groupby("ticker", sort=False):
            index = rows.index.to_numpy()
            for name, column in columns.items():
                values = F.compute(rows, name)
                warm = F.warmup(name)
                bad = ~np.isfinite(values[warm:])
                if bad.any():
                    first = warm + int(np.flatnonzero(bad)[0])
                    i = index[first]
                    # Not finite right after the declared warm-up, at the series' very start: most likely a
                    # transform that needs more warm-up rows than it declares (a rolling window).
                    cause = (
                        f"row {first + 1} of the ticker's series, just after its {warm} warm-up rows: if the "
                        f"transform needs more history, register it with @transform(..., warmup=N)"
                        if first == warm and name in F.TRANSFORMS and not np.isfinite(values[: warm + 1]).any()
                        else "a zero price or volume, or a value the transform cannot take?"
                    )
                    raise ForecastingError(
                        f"{path}: {where(Path(path), int(frame['line'].iat[i]))}: transform '{name}' is not finite for "
                        f"ticker '{ticker}' on {stamp(frame['time'].iat[i])} ({cause}); fix the row"
                    )
                column[index] = values
        for name, column in columns.items():
            frame[f"f:{name}"] = column
        return frame

    def scaler_rows(self, frame: pd.DataFrame, val: pd.Timestamp) -> pd.DataFrame:
        """The rows the scaler learns from: every row before the validation start, no later one."""
        keep = frame["time"] < val
        if self.train_start is not None:
            keep &= frame["time"] >= self.train_start
        return frame[keep]

    def fit_stats(self, frame: pd.DataFrame, val: pd.Timestamp, test: pd.Timestamp) -> dict:
        train = self.scaler_rows(frame, val)
        groups = train.groupby("ticker", sort=False) if self.scale_per_ticker else [("*", train)]
        stats = {"tickers": [], "center": [], "scale": [], "target_center": [], "target_scale": []}
        for ticker, rows in groups:
            where = f"{self.path} (ticker '{ticker}', rows before {stamp(val)})"
            cols = [f"f:{n}" for n in self.features]
            center, scale = fit_scaler(self.scaler, rows[cols].to_numpy(), self.features, where)
            t_center, t_scale = fit_scaler(self.scaler, rows[[f"f:{self.target}"]].to_numpy(), [self.target], where)
            stats["tickers"].append(ticker)
            stats["center"].append(center)
            stats["scale"].append(scale)
            stats["target_center"].append(t_center[0])
            stats["target_scale"].append(t_scale[0])
        stats.update(
            features=list(self.features), target=self.target, horizon=self.horizon, scaler=self.scaler,
            val_start=val.isoformat(), test_start=test.isoformat(),
        )  # fmt: skip
        series, ticker = frame[f"f:{self.target}"].to_numpy(), frame["ticker"].to_numpy()
        targets = future(series, pd.factorize(ticker)[0], self.horizon)
        first, last = self.target_times(frame)
        in_train = (last < np.datetime64(val)) & np.isfinite(targets).all(1)
        if self.train_start is not None:
            in_train &= first >= np.datetime64(self.train_start)
        stats["baselines"] = baselines_fit(series, ticker, targets, in_train, self.target)
        # Leakage audit trail: first and last time each part of the pipeline covers (ISO strings,
        # in the checkpoint and the hparams). Splits add their target times in dataset().
        stats["ranges"] = {"scaler": [d.isoformat() for d in (train["time"].min(), train["time"].max())]}
        if in_train.any():  # the target times the baselines (training mean, HAR) were fitted on
            days = (first[in_train].min(), last[in_train].max())
            stats["ranges"]["baselines"] = [pd.Timestamp(d).isoformat() for d in days]
        return stats

    def tensors(self, frame: pd.DataFrame):
        """Per row: scaled inputs (rows, F), scaled targets (rows, H), target loc and scale, ticker id,
        and each baseline's forecast (rows, H) in original units."""
        if self.stats is None:
            raise ForecastingError("predict on data.predict_path needs a trained model: pass --ckpt_path")
        if self.stats["features"] != self.features or self.stats["target"] != self.target:
            raise ForecastingError(
                f"the checkpoint was trained on features {self.stats['features']} and target "
                f"'{self.stats['target']}', but data.features={self.features}, data.target='{self.target}'"
            )
        if self.stats["tickers"] == ["*"]:
            group = np.zeros(len(frame), dtype=np.int64)
        else:
            known = {t: i for i, t in enumerate(self.stats["tickers"])}
            unknown = sorted(set(frame["ticker"]) - set(known))
            if unknown:
                raise ForecastingError(f"tickers {unknown} were not in training; scale_per_ticker needs known tickers")
            group = frame["ticker"].map(known).to_numpy()
        center, scale = np.asarray(self.stats["center"])[group], np.asarray(self.stats["scale"])[group]
        x = (frame[[f"f:{n}" for n in self.features]].to_numpy() - center) / scale
        t_loc = np.asarray(self.stats["target_center"])[group]
        t_scale = np.asarray(self.stats["target_scale"])[group]
        series = pd.factorize(frame["ticker"])[0]
        raw = frame[f"f:{self.target}"].to_numpy()
        y = (future(raw, series, self.horizon) - t_loc[:, None]) / t_scale[:, None]
        base = baselines_forecast_rows(raw, frame["ticker"].to_numpy(), self.stats["baselines"], self.horizon)

        def f32(a):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        base = {name: f32(b) for name, b in base.items()}
        return f32(x), f32(y), f32(t_loc), f32(t_scale), torch.from_numpy(series), base, {}, None  # x scaled already

    def target_times(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Date of the first and last target day of the sample ending on each row (NaT if none)."""
        series = pd.factorize(frame["ticker"])[0]
        times = frame["time"].to_numpy()
        first = np.full(len(frame), np.datetime64("NaT"), dtype=times.dtype)
        last = first.copy()
        h = self.horizon
        first[:-1] = np.where(series[1:] == series[:-1], times[1:], first[:-1])
        if len(frame) > h:
            last[:-h] = np.where(series[h:] == series[:-h], times[h:], last[:-h])
        return first, last
