"""From a price file to scaled, leak-free batches of windows.

file -> validated frame (io.py) -> features and targets (features.py)
     -> split by the date of each sample's TARGET -> scaler fitted on training rows only
     -> one contiguous tensor -> zero-copy windows (windows.py) -> batches

Big files: docs/data.md (column projection, float32 features, the CSV cache, and
data.shard_by_rank: each DDP rank loading only its tickers, sharding.py).

A sample is the window of `window` days ending at day t; its target is the
`horizon` values of `target` on days t+1..t+h. It belongs to the split that
holds all its target days (samples whose targets straddle a boundary are
dropped), so no validation or test target is ever a training target. Its
inputs may look back into earlier splits, as they would in live use.
"""

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from forecasting import baselines, risk_baselines
from forecasting.data import features as F
from forecasting.data import scaling, sharding, source, stream
from forecasting.data.base import ForecastData, keep_batch
from forecasting.data.io import (
    BAD_VALUE_POLICIES,
    CSV_SUFFIXES,
    MISSING_POLICIES,
    check_timezone,
    quality_report,
    read_prices,
    read_table,
    stamp,
    where,
)  # fmt: skip
from forecasting.data.windows import RowScaler, WindowDataset, valid_ends
from forecasting.errors import ForecastingError


def future(values: np.ndarray, series: np.ndarray, horizon: int) -> np.ndarray:
    """(rows, horizon): row t holds values[t+1..t+horizon] of the same series, NaN past its end."""
    out = np.full((len(values), horizon), np.nan)
    for h in range(1, horizon + 1):
        same = series[h:] == series[:-h]
        out[:-h, h - 1] = np.where(same, values[h:], np.nan)
    return out


STAGES = ("train", "val", "test")
TIME_CHUNK = 1 << 20  # rows at a time: target times, window ends, split ends
BLOCK_ROWS = 1 << 20  # rows (whole tickers) per block of the built-in transforms


def time_span(times: np.ndarray, rows: np.ndarray):
    """(first, last) of times[rows] (a boolean mask), a block at a time; None if no row."""
    parts = []
    for a in range(0, len(times), TIME_CHUNK):
        chosen = times[a : a + TIME_CHUNK][rows[a : a + TIME_CHUNK]]
        if len(chosen):
            parts.append((chosen.min(), chosen.max()))
    return (min(p[0] for p in parts), max(p[1] for p in parts)) if parts else None


def window_ends(series: torch.Tensor, x: torch.Tensor, window: int) -> torch.Tensor:
    """valid_ends() over blocks of whole series of about TIME_CHUNK rows (windows never cross a
    series): the same ends, without temporaries of the file's size."""
    ids, parts, a = series.numpy(), [], 0
    index_type = torch.int32 if len(ids) < 2**31 else torch.long  # half the memory of int64 ends
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(1, np.int64)
    cuts = starts[np.searchsorted(starts, np.arange(TIME_CHUNK, len(ids), TIME_CHUNK), side="right") - 1]
    for b in [*np.unique(cuts[cuts > 0]).tolist(), len(ids)]:
        parts.append((valid_ends(series[a:b], torch.isnan(x[a:b]).any(1), window) + a).to(index_type))
        a = b
    return torch.cat(parts) if parts else torch.empty(0, dtype=index_type)


def ticker_runs(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(first row, number of rows) of each ticker; rows are sorted by ticker."""
    codes = frame["ticker"].cat.codes.to_numpy()
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    return starts, np.diff(np.r_[starts, len(codes)])


class PriceDataModule(ForecastData):
    """Prices of one or many tickers in long format (one row per ticker and time: daily or intraday).

    Times with a UTC offset are converted to `timezone` (default UTC) and used as naive
    times in that zone; times without one are taken to be in it already. Split points
    (`val_start`, `test_start`) are fractions of the distinct times, dates or full timestamps.

    Example: python -m forecasting fit --config configs/volatility.yaml
    """

    def __init__(
        self,
        path: str = "data/stocks.csv",
        time_column: str = "date",
        ticker_column: str | None = "ticker",
        columns: dict[str, str] | None = None,
        adjust_column: str | None = None,
        date_format: str | None = None,
        missing: str = "error",
        bad_values: str = "error",
        max_flat_rows: int | None = 20,
        timezone: str = "UTC",
        tickers: list[str] | None = None,
        features: tuple[str, ...] = ("log_return", "gk_log_var", "log_volume_change"),
        target: str = "gk_log_var",
        horizon: int = 1,
        window: int = 64,
        val_start: float | str = 0.7,
        test_start: float | str = 0.85,
        scaler: str = "standard",
        scale_per_ticker: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        dense_targets: bool = False,
        predict_path: str | None = None,
        train_start: str | None = None,  # null: train on everything before val_start (backtest.py sets these two)
        test_end: str | None = None,  # null: test on everything from test_start on
        mode: str = "windows",  # "stream": walk each series once per epoch, state carried (docs/tbptt.md)
        tbptt_steps: int | None = None,  # stream mode's chunk length: linked from model.tbptt_steps by the CLI
        cache_dir: str | None = None,  # null: <logger save_dir>/data_cache; a CSV's Parquet copy (source.py)
        shard_by_rank: bool = False,  # under DDP each rank loads only its share of the tickers (sharding.py)
    ):
        super().__init__()
        features = list(features)
        for name in [*features, target]:
            if not F.load(name) and name not in (columns or {}):
                raise ForecastingError(
                    f"data.features/data.target: unknown transform '{name}'; use one of "
                    f"{sorted(n for n in F.TRANSFORMS if '.' not in n)}, a column named in data.columns, or the "
                    "dotted path of your own @transform (my_features.realised_vol_20)"
                )
        if columns is None:
            columns = {c: c for c in F.required_columns([*features, target])}
        absent = [c for c in F.required_columns([*features, target]) if c not in columns]
        if absent:
            raise ForecastingError(f"data.columns: add {absent}, the file columns that {features + [target]} need")
        if not features:
            raise ForecastingError("data.features: give at least one feature")
        for key, value in {"window": window, "horizon": horizon, "batch_size": batch_size}.items():
            if not isinstance(value, int) or value < 1:
                raise ForecastingError(f"data.{key}: must be a positive integer, got {value!r}")
        if not isinstance(time_column, str) or not time_column:
            raise ForecastingError("data.time_column: required; name the file's column of dates or times")
        check_timezone(timezone)
        if bad_values not in BAD_VALUE_POLICIES:
            raise ForecastingError(
                f"data.bad_values: unknown policy '{bad_values}'; use one of {list(BAD_VALUE_POLICIES)}"
            )
        if bad_values == "missing" and missing == "error":
            raise ForecastingError(
                "data.bad_values: missing hands bad rows to data.missing, which is 'error'; "
                "set data.missing: ffill or drop"
            )
        if max_flat_rows is not None and (not isinstance(max_flat_rows, int) or max_flat_rows < 2):
            raise ForecastingError(f"data.max_flat_rows: use null (no check) or an integer >= 2, got {max_flat_rows!r}")
        if tickers is not None and len(tickers) == 0:
            raise ForecastingError("data.tickers: the list is empty; name at least one ticker, or null for all of them")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ForecastingError(
                f"data.num_workers: must be 0 (load in the main process) or more, got {num_workers!r}"
            )
        if missing not in MISSING_POLICIES:
            raise ForecastingError(f"data.missing: unknown policy '{missing}'; use one of {list(MISSING_POLICIES)}")
        if scaler not in scaling.SCALER_NAMES:
            raise ForecastingError(f"data.scaler: unknown scaler '{scaler}'; use one of {list(scaling.SCALER_NAMES)}")
        for key, value in {"val_start": val_start, "test_start": test_start}.items():
            if isinstance(value, float) and not 0 < value < 1:
                raise ForecastingError(f"data.{key}: a fraction must lie in (0, 1), got {value}")
        if isinstance(val_start, float) and isinstance(test_start, float) and val_start >= test_start:
            raise ForecastingError(f"data.val_start ({val_start}) must come before data.test_start ({test_start})")
        if mode not in ("windows", "stream"):
            raise ForecastingError(f"data.mode: unknown mode '{mode}'; use 'windows' or 'stream'")
        if mode == "stream" and tbptt_steps is None:
            raise ForecastingError(
                "data.mode: stream needs model.tbptt_steps (the chunk length k each batch advances by); set it"
            )
        # tbptt_steps is the model's key (the CLI links it here for stream mode): left out, so a model
        # built in Python with tbptt_steps and a data module without it still log their hparams together.
        self.save_hyperparameters(ignore=["tbptt_steps"])
        if mode == "stream" and shard_by_rank:
            raise ForecastingError(
                "data.shard_by_rank: true cannot be combined with data.mode: stream (stream mode shares its lanes "
                "across ranks itself); set data.shard_by_rank: false"
            )
        self.mode, self.tbptt_steps = mode, tbptt_steps
        self.path, self.time_column, self.ticker_column = path, time_column, ticker_column
        self.columns, self.adjust_column, self.date_format = dict(columns), adjust_column, date_format
        self.missing, self.bad_values, self.max_flat_rows, self.timezone = missing, bad_values, max_flat_rows, timezone
        self.quality: dict[str, dict] = {}  # "fit" / "predict": per-ticker data-quality summary (io.summarise)
        self.tickers, self.features, self.target = tickers, features, target
        self.horizon, self.window, self.val_start, self.test_start = horizon, window, val_start, test_start
        self.scaler, self.scale_per_ticker = scaler, scale_per_ticker
        self.batch_size, self.num_workers, self.dense_targets = batch_size, num_workers, dense_targets
        self.predict_path = predict_path
        self.train_start = None if train_start is None else pd.Timestamp(train_start)
        self.test_end = None if test_end is None else pd.Timestamp(test_end)
        self.cache_dir = cache_dir
        self._pending_caches: list = []  # CSV caches kept once the run's checks pass (commit_caches)
        self._preparing = False
        self.shard_by_rank = shard_by_rank
        self.sharded = False  # set by setup: this rank holds only its share of the tickers
        self.stats: dict | None = None  # fitted scaler; restored from a checkpoint by load_state_dict
        self.frames: dict[str, pd.DataFrame] = {}  # "fit" / "predict": validated rows with features
        self._datasets: dict[str, WindowDataset] = {}
        self._tensors: dict[str, tuple] = {}  # "fit" / "predict": the rows every split of that frame shares
        self._resume_step = 0  # stream mode: batches of the epoch a mid-epoch checkpoint had done

    # Sizes the CLI links into the model (cli.py): known without reading any file.
    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def target_kind(self) -> str:
        """'log_variance', 'return' or 'other': which extra metrics apply (QLIKE, hit rate)."""
        if self.target in baselines.LOG_VARIANCE_TARGETS:
            return "log_variance"
        return "return" if self.target == "log_return" else "other"

    @property
    def target_names(self) -> list[str]:
        return [f"{self.target}_t+{h}" for h in range(1, self.horizon + 1)]

    # ---------------------------------------------------------------- reading
    def load(self, path: str, tickers: list[str] | None = None) -> pd.DataFrame:
        """Validated rows of `path` (only `tickers`' rows if given, else data.tickers') with one column
        `f:<name>` per feature and the target, plus time, ticker and line; the raw price columns are
        dropped once the transforms are computed. Features are float32, the target float64 (baselines
        and targets in full precision)."""
        report: dict = {}
        wanted = self.tickers if tickers is None else tickers
        names = list(dict.fromkeys([*self.features, self.target]))
        # A file column used only raw, as a float32 feature, is read into float32 straight after its
        # checks (io.read_prices): half the memory while the other columns are checked and transformed.
        narrow = tuple(
            n for n in self.features
            if n not in F.TRANSFORMS and n != self.target and sum(n in F.required_columns([m]) for m in names) == 1
        )  # fmt: skip
        frame = read_prices(
            path, self.time_column, self.ticker_column, self.columns, self.adjust_column, self.date_format,
            self.missing, self.timezone, self.bad_values, self.max_flat_rows, report,
            cache_dir=self.csv_cache_dir(), tickers=wanted, pending=self._pending_caches, narrow=narrow,
        )  # fmt: skip
        self.quality[path] = report
        if self.tickers is not None:
            unknown = sorted(set(map(str, self.tickers)) - set(frame["ticker"].cat.categories))
            if unknown and tickers is None:
                raise ForecastingError(
                    f"{path}: data.tickers names {unknown}, not in the file's '{self.ticker_column}'"
                )
        starts, lengths = ticker_runs(frame)
        short = lengths < self.window + self.horizon
        for start, length in zip(starts[short], lengths[short], strict=True):
            warnings.warn(
                f"{path}: ticker '{frame['ticker'].iat[start]}' has {length} rows, fewer than data.window + "
                f"data.horizon = {self.window + self.horizon}; skipping it",
                stacklevel=2,
            )
        if short.all():
            raise ForecastingError(
                f"{path}: no ticker has data.window + data.horizon = {self.window + self.horizon} rows; "
                "use a smaller window or a longer file"
            )
        if short.any():
            frame = frame[np.repeat(~short, lengths)].reset_index(drop=True)
            frame["ticker"] = frame["ticker"].cat.remove_unused_categories()
            starts, lengths = starts[~short], lengths[~short]
            starts = np.r_[0, np.cumsum(lengths)[:-1]]
        # One array per transform, filled over blocks of tickers: features as float32 (what the model
        # reads), the target as float64 (its scaler, targets and baselines keep full precision).
        if "close" in frame and self.target_kind in ("return", "log_variance") and self.target != "log_return":
            names = list(dict.fromkeys([*names, "log_return"]))  # the risk baselines' input (returns())
        raw = {c: frame[c].to_numpy() for c in frame.columns if c not in ("time", "ticker", "line")}
        frame = frame[["time", "ticker", "line"]]  # the price columns now live in `raw` alone
        order = self.transform_order(names, raw)
        later = {c: max((i for i, n in enumerate(order) if c in F.required_columns([n])), default=0) for c in raw}
        columns, problems = {}, []
        # Blocks of whole tickers of about BLOCK_ROWS rows, for the built-in transforms.
        cuts = np.unique(np.searchsorted(np.cumsum(lengths), np.arange(1, len(frame) // BLOCK_ROWS + 1) * BLOCK_ROWS))
        cuts = [0, *[int(c) + 1 for c in cuts if c + 1 < len(starts)], len(starts)]
        blocks = list(zip(cuts[:-1], cuts[1:], strict=True))
        for step, name in enumerate(order):
            k, warm = names.index(name), F.warmup(name)  # k: the order problems are reported in
            if name in narrow:  # already float32 (read_prices): the column itself, checked below
                column = columns[name] = raw[name]
            else:
                column = columns[name] = np.empty(len(frame), np.float64 if name == self.target else np.float32)
            if F.rowwise(name):  # built-in: over blocks of whole tickers, then each one's warm-up rows NaN
                needed = F.required_columns([name])
                for first, last in blocks:
                    a, b = int(starts[first]), int(starts[last - 1] + lengths[last - 1])
                    if name in narrow:
                        values = column[a:b]
                    else:
                        values = F.compute(pd.DataFrame({c: raw[c][a:b] for c in needed}, copy=False), name)
                    head = (starts[first:last, None] - a + np.arange(warm)).ravel()
                    if warm:
                        values = values if values.flags.writeable else values.copy()
                        values[head] = np.nan
                    bad = ~np.isfinite(values)
                    bad[head] = False
                    if bad.any():
                        i = int(np.flatnonzero(bad)[0])
                        t = first + int(np.searchsorted(starts[first:last] - a, i, side="right")) - 1
                        start = int(starts[t]) - a
                        problems.append((t, k, a + start, i - start, values[start : start + warm + 1]))
                    if name not in narrow:
                        column[a:b] = values
                    del values, bad
            else:  # your own transforms: one ticker's frame at a time
                for t, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
                    rows = pd.DataFrame({c: v[start : start + length] for c, v in raw.items()}, copy=False)
                    values = F.compute(rows, name)
                    bad = ~np.isfinite(values[warm:])
                    if bad.any():
                        problems.append((t, k, start, warm + int(np.flatnonzero(bad)[0]), values[: warm + 1]))
                    column[start : start + length] = values
            freed = [c for c, last in later.items() if last == step]
            for c in freed:
                del raw[c], later[c]
            if freed:
                source.release()  # a column Arrow handed over without a copy goes back to its pool
        if problems:  # the first ticker's first transform, as a row-by-row pass would find it
            t, k, start, first, head = min(problems, key=lambda p: p[:2])
            name, warm, i = names[k], F.warmup(names[k]), start + first
            # Not finite right after the declared warm-up, at the series' very start: most likely a
            # transform that needs more warm-up rows than it declares (a rolling window).
            cause = (
                f"row {first + 1} of the ticker's series, just after its {warm} warm-up rows: if the "
                f"transform needs more history, register it with @transform(..., warmup=N)"
                if first == warm and name in F.TRANSFORMS and not np.isfinite(head).any()
                else "a zero price or volume, or a value the transform cannot take?"
            )
            raise ForecastingError(
                f"{path}: {where(Path(path), int(frame['line'].iat[i]))}: transform '{name}' is not finite "
                f"for ticker '{frame['ticker'].iat[i]}' on {stamp(frame['time'].iat[i])} ({cause}); fix the row"
            )
        del raw
        # The model's inputs: one (rows, F) float32 matrix; the frame's feature columns are views of it.
        inputs = np.empty((len(frame), len(self.features)), dtype=np.float32)
        for j, name in enumerate(self.features):
            inputs[:, j] = columns[name]
            if name != self.target:
                del columns[name]
        source.release()
        keep = {c: frame[c] for c in ("time", "ticker", "line")}
        extra = {f"f:{n}": c for n, c in columns.items() if n != self.target}  # log_return for the risk baselines
        features = {f"f:{n}": inputs[:, j] for j, n in enumerate(self.features)}
        return pd.DataFrame({**keep, **features, **extra, "target": columns[self.target]}, copy=False)

    @staticmethod
    def transform_order(names: list[str], raw: dict[str, np.ndarray]) -> list[str]:
        """The order to compute `names` in: next, the transform whose output costs least memory net
        of the raw columns it is the last to need (freed right after it); ties in the given order."""
        order, todo = [], list(names)
        while todo:

            def net(name):
                others = {c for m in todo if m != name for c in F.required_columns([m])}
                freed = [c for c in F.required_columns([name]) if c in raw and c not in others]
                as_read = name not in F.TRANSFORMS and name in raw and raw[name].dtype == np.float32  # no new array
                return sum(raw[c].itemsize for c in freed) - (0 if as_read else 4)

            best = max(todo, key=lambda n: (net(n), -todo.index(n)))
            order.append(best)
            todo.remove(best)
        return order

    def csv_cache_dir(self) -> Path | None:
        """Where a CSV's Parquet cache goes: data.cache_dir, else `data_cache` in the logger's folder."""
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        save_dir = getattr(self.trainer.logger, "save_dir", None) if self.trainer is not None else None
        return Path(save_dir) / "data_cache" if save_dir else None

    def commit_caches(self, keep: bool = True) -> None:
        """Keep (or drop) the CSV caches written by this run's reads (source.CsvCache)."""
        while self._pending_caches:
            cache = self._pending_caches.pop()
            cache.commit() if keep else cache.discard()

    def split_dates(self, times: pd.Series) -> tuple[pd.Timestamp, pd.Timestamp]:
        dates = np.sort(times.unique())

        def resolve(value, key):
            if isinstance(value, float):
                return pd.Timestamp(dates[int(value * (len(dates) - 1))])
            try:
                time = pd.Timestamp(value)
            except (ValueError, TypeError):
                raise ForecastingError(
                    f"data.{key}: cannot parse {value!r}; use a date (2009-01-01), a timestamp "
                    "(2009-01-01T14:30, with or without an offset) or a fraction in (0, 1)"
                ) from None
            if time.tzinfo is not None:  # compare in data.timezone, like the file's times
                time = time.tz_convert(self.timezone).tz_localize(None)
            return time

        val, test = resolve(self.val_start, "val_start"), resolve(self.test_start, "test_start")
        if val >= test:
            raise ForecastingError(f"data.val_start ({stamp(val)}) must come before data.test_start ({stamp(test)})")
        return val, test

    def frame_key(self, stage: str) -> str:
        """Which file a stage reads: 'predict' (data.predict_path) or 'fit' (data.path)."""
        return "predict" if stage == "predict" and self.predict_path else "fit"

    def prepare_data(self) -> None:
        """Read and check everything the run will need, so a bad file or an empty split stops it
        before any logger writes to the log dir (Lightning calls this before loggers start)."""
        stage = self.trainer.state.fn.value if self.trainer is not None else None
        if stage is None:
            return
        if self.shard_by_rank and sharding.world()[1] > 1 and self.frame_key(stage) == "fit":
            # Other ranks wait at a barrier: no collectives here, so no checks either (setup does them on
            # every rank); only parse a CSV once, for every rank to read from the cache.
            text = (self.ticker_column,) if self.ticker_column else ()
            cache_dir = self.csv_cache_dir()
            if cache_dir is not None and Path(self.path).suffix.lower() in CSV_SUFFIXES:
                cache = read_table(self.path, None, text, cache_dir)[3]
                if cache is not None:
                    cache.commit()
            return
        self._preparing = True
        try:
            self.setup(stage)
            for split in {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ()):
                self.dataset(split)
        except BaseException:
            self.commit_caches(keep=False)  # a refused run leaves no cache behind
            raise
        finally:
            self._preparing = False
        self.commit_caches()
        self.report_quality()

    def report_quality(self) -> None:
        """Print the data-quality summary of each file read; save it to the log dir and TensorBoard."""
        text = "\n".join(quality_report(p, q, self.bad_values, self.missing) for p, q in self.quality.items() if q)
        if not text:
            return
        print(text)
        # Only into a logger's folder: without one, log_dir falls back to the working directory.
        # trainer.log_dir broadcasts (a collective): prepare_data runs on rank 0 only, so ask the logger.
        logger = self.trainer.logger if self.trainer is not None else None
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / "data_quality.txt").write_text(text + "\n", encoding="utf-8")
            experiment = getattr(self.trainer.logger, "experiment", None)
            if hasattr(experiment, "add_text"):  # TensorBoard's text tab renders Markdown: indent = code block
                experiment.add_text("data_quality", "\n".join("    " + line for line in text.splitlines()))

    def setup(self, stage: str) -> None:
        which = self.frame_key(stage)
        if which in self.frames:
            return
        if which == "fit" and stage != "predict" and self.shard_by_rank and sharding.world()[1] > 1:
            return self.setup_shard()
        self.frames[which] = self.load(self.predict_path if which == "predict" else self.path)
        if which == "fit":
            frame = self.frames["fit"]
            val, test = self.split_dates(frame["time"])
            if self.stats is None:
                self.stats = self.fit_stats(frame, val, test)
                self.audit()
        if not self._preparing:
            self.commit_caches()

    def share(self) -> list[str] | None:
        """This rank's tickers (sharding.py), or None: load them all."""
        if self.ticker_column is None:
            return None
        text = (self.ticker_column,)
        names = read_table(self.path, [self.ticker_column], text, self.csv_cache_dir())[0][self.ticker_column]
        # Count per category, then per stripped name: not one string per row.
        per_category = names.value_counts(sort=False, dropna=False)
        labels = ["nan" if pd.isna(c) else str(c).strip() for c in per_category.index]
        counts = pd.Series(per_category.to_numpy(), index=labels).groupby(level=0, sort=False).sum()
        counts = counts[counts > 0]
        if self.tickers is not None:
            unknown = sorted(set(map(str, self.tickers)) - set(counts.index))
            if unknown:
                raise ForecastingError(
                    f"{self.path}: data.tickers names {unknown}, not in the file's '{self.ticker_column}'"
                )
            counts = counts[[str(t).strip() for t in dict.fromkeys(self.tickers)]]
        rank, size = sharding.world()
        blocks = sharding.split(list(counts.index), counts.tolist(), size)
        return None if blocks is None else blocks[rank]

    def setup_shard(self) -> None:
        """setup('fit') of one DDP rank holding its share of the tickers: statistics combined over all
        ranks, equal to one process's; a problem on any rank stops every rank with its message."""

        def agreed(step):
            try:
                out, error = step(), None
            except ForecastingError as err:
                out, error = None, str(err)
            errors = [e for e in sharding.gather(error) if e]
            if errors:
                raise ForecastingError(errors[0])
            return out

        share = agreed(self.share)
        self.sharded = share is not None
        frame = self.frames["fit"] = agreed(lambda: self.load(self.path, tickers=share))
        times = np.unique(np.concatenate(sharding.gather(np.unique(frame["time"].to_numpy()))))
        val, test = self.split_dates(pd.Series(times))
        if self.stats is None:
            self.stats = self.fit_stats(frame, val, test, sharding.gather if self.sharded else None)
            self.audit()
        if self.sharded:  # every rank needs windows in every split, or the others would wait for it
            agreed(lambda: [self.dataset(s) for s in STAGES])

    def scaler_rows(self, frame: pd.DataFrame, val: pd.Timestamp) -> np.ndarray:
        """The rows the scaler learns from (a boolean mask; the rows themselves also do): every row
        before the validation start, no later one."""
        times = frame["time"].to_numpy()
        keep = times < np.datetime64(val)
        if self.train_start is not None:
            keep &= times >= np.datetime64(self.train_start)
        return keep

    def audit(self) -> None:
        """Leakage audit: refuse a scaler that saw a validation or test target's day."""
        scaler_end, val_start = self.stats["ranges"]["scaler"][1], self.stats["val_start"]
        if pd.Timestamp(scaler_end) >= pd.Timestamp(val_start):
            raise ForecastingError(
                f"{self.path}: leakage: the scaler was fitted on rows up to {scaler_end}, but validation targets "
                f"start on {val_start}; fit it on training rows only (PriceDataModule.scaler_rows)"
            )
        self.hparams["ranges"] = self.stats["ranges"]  # logged with the hyperparameters

    def fit_stats(self, frame: pd.DataFrame, val: pd.Timestamp, test: pd.Timestamp, gather=None) -> dict:
        """Scaler, baselines and ranges from the training rows. `gather(obj)`: every DDP rank's `obj`
        (ranks holding different tickers, sharding.py); None: this process holds every row."""
        train = self.scaler_rows(frame, val)
        if isinstance(train, pd.DataFrame):  # an override may return the rows rather than a mask
            train = frame.index.isin(train.index)
        train = np.asarray(train, dtype=bool)
        if self.scale_per_ticker:  # rows are sorted by ticker: one slice each
            bounds = zip(*ticker_runs(frame), strict=True)
            groups = [(frame["ticker"].iat[a], slice(a, a + n)) for a, n in bounds if train[a : a + n].any()]
        else:
            groups = [("*", slice(0, len(frame)))]
        # Per ticker, each rank fits its own tickers; one scaler for all combines every rank's moments.
        pooled = None if self.scale_per_ticker else gather
        keys = ("tickers", "center", "scale", "target_center", "target_scale")
        stats, error = {k: [] for k in keys}, None
        try:
            for name, part in groups:
                where = f"{self.path} (ticker '{name}', rows before {stamp(val)})"
                mask = train[part]

                def column(key, part=part, mask=mask):
                    return lambda: frame[key].to_numpy()[part][mask]

                inputs = [column(f"f:{n}") for n in self.features]
                center, scale = scaling.fit(self.scaler, inputs, self.features, where, pooled)
                t_center, t_scale = scaling.fit(self.scaler, [column("target")], [self.target], where, pooled)
                for key, value in zip(keys, (name, center, scale, t_center[0], t_scale[0]), strict=True):
                    stats[key].append(value)
        except ForecastingError as err:
            if gather is None or pooled is not None:  # (pooled: every rank raised the same)
                raise
            error = str(err)
        if self.scale_per_ticker and gather is not None:  # ranks hold sorted blocks: rank order is ticker order
            parts = gather((stats, error))
            errors = [e for _, e in parts if e]
            if errors:
                raise ForecastingError(errors[0])
            stats = {k: [v for p, _ in parts for v in p[k]] for k in keys}
        stats.update(
            features=list(self.features), target=self.target, horizon=self.horizon, scaler=self.scaler,
            val_start=val.isoformat(), test_start=test.isoformat(),
        )  # fmt: skip
        series, ids = frame["target"].to_numpy(), self.series_ids(frame)
        targets = future(series, ids, self.horizon)
        in_train, target_spans = np.isfinite(targets).all(1), []
        for a in range(0, len(frame), TIME_CHUNK):  # target times a block at a time, not of the file's size
            rows = np.arange(a, min(a + TIME_CHUNK, len(frame)))
            first, last = self.end_times(frame, rows, ids)
            chosen = in_train[rows] & (last < np.datetime64(val))
            if self.train_start is not None:
                chosen &= first >= np.datetime64(self.train_start)
            in_train[rows] = chosen
            if chosen.any():
                target_spans.append((first[chosen].min(), last[chosen].max()))
        stats["baselines"] = baselines.fit(series, ids, targets, in_train, self.target, gather)
        # GARCH, EWMA, empirical quantiles: from training rows' returns and training targets only.
        # Not with shard_by_rank: quantiles of every rank's training targets do not combine exactly.
        if gather is None:
            tickers = frame["ticker"].array
            stats["risk"] = risk_baselines.fit(self.returns(frame), tickers, train, targets, in_train, self.target_kind)
        else:
            rank_zero_info("risk baselines (GARCH, EWMA, empirical) are skipped with data.shard_by_rank")
        # Leakage audit trail: first and last time each part of the pipeline covers (ISO strings,
        # in the checkpoint and the hparams). Splits add their target times in dataset().
        times = frame["time"].to_numpy()
        spans = [time_span(times, train)]
        spans = [s for s in (gather(spans[0]) if gather else spans) if s is not None]
        if not spans:
            raise ForecastingError(f"{self.path}: no training rows to fit the scaler; move data.val_start later")
        scaler_days = (min(s[0] for s in spans), max(s[1] for s in spans))
        stats["ranges"] = {"scaler": [pd.Timestamp(d).isoformat() for d in scaler_days]}
        days = [(min(d[0] for d in target_spans), max(d[1] for d in target_spans)) if target_spans else None]
        days = [d for d in (gather(days[0]) if gather else days) if d is not None]
        if days:  # the target times the baselines (training mean, HAR) were fitted on
            span = (min(d[0] for d in days), max(d[1] for d in days))
            stats["ranges"]["baselines"] = [pd.Timestamp(d).isoformat() for d in span]
        source.release()
        return stats

    def returns(self, frame: pd.DataFrame) -> np.ndarray | None:
        """Each row's log return (the risk baselines' input: load() computes it whenever close prices
        are read), or None without close prices."""
        if self.target == "log_return":
            return frame["target"].to_numpy()  # the target: float64
        return frame["f:log_return"].to_numpy() if "f:log_return" in frame else None  # float32: taken as float64

    @staticmethod
    def series_ids(frame: pd.DataFrame) -> np.ndarray:
        """0, 1, 2, ... per ticker in row order (rows are sorted by ticker), int32."""
        ticker = frame["ticker"]
        categorical = isinstance(ticker.dtype, pd.CategoricalDtype)
        codes = ticker.cat.codes.to_numpy() if categorical else pd.factorize(ticker)[0]
        ids = np.empty(len(codes), dtype=np.int32)
        if len(codes):
            ids[0] = 0
            np.cumsum(codes[1:] != codes[:-1], out=ids[1:])
        return ids

    # ---------------------------------------------------------------- tensors
    def inputs(self, frame: pd.DataFrame) -> np.ndarray:
        """The (rows, F) float32 matrix of the frame's features, unscaled. load() builds the frame's
        feature columns as views of one such matrix: that matrix itself, no copy; a frame made
        otherwise (a selection of rows, your own) is copied into a new one."""
        columns = [frame[f"f:{n}"].to_numpy() for n in self.features]
        matrix = columns[0].base
        shape, step = (len(frame), len(self.features)), len(self.features) * 4
        if (
            isinstance(matrix, np.ndarray) and matrix.shape == shape and matrix.dtype == np.float32
            and matrix.flags.c_contiguous and matrix.flags.writeable
            and all(c.strides == (step,) and c.ctypes.data == matrix.ctypes.data + 4 * j for j, c in enumerate(columns))
        ):  # fmt: skip
            return matrix
        matrix = np.empty(shape, dtype=np.float32)
        for j, column in enumerate(columns):
            matrix[:, j] = column
        return matrix

    def tensors(self, frame: pd.DataFrame):
        """Per row: the inputs (rows, F) unscaled (the frame's own matrix) with the `RowScaler` that
        scales them batch by batch, scaled targets (rows, H), target loc and scale, ticker id, and
        each baseline's forecast (rows, H) in original units: one copy of the features, in float32."""
        if self.stats is None:
            raise ForecastingError("predict on data.predict_path needs a trained model: pass --ckpt_path")
        if self.stats["features"] != self.features or self.stats["target"] != self.target:
            raise ForecastingError(
                f"the checkpoint was trained on features {self.stats['features']} and target "
                f"'{self.stats['target']}', but data.features={self.features}, data.target='{self.target}'"
            )
        n = len(frame)
        center, scale = np.asarray(self.stats["center"]), np.asarray(self.stats["scale"])
        t_center, t_scale = np.asarray(self.stats["target_center"]), np.asarray(self.stats["target_scale"])
        series = self.series_ids(frame)
        if self.stats["tickers"] == ["*"]:
            group = None
            t_loc = torch.tensor(t_center, dtype=torch.float32).expand(n)  # one value, no copy per row
            t_scl = torch.tensor(t_scale, dtype=torch.float32).expand(n)
            scaler = RowScaler(center, scale)
        else:
            known = {t: i for i, t in enumerate(self.stats["tickers"])}
            unknown = sorted(set(frame["ticker"].cat.categories) - set(known))
            if unknown:
                raise ForecastingError(f"tickers {unknown} were not in training; scale_per_ticker needs known tickers")
            starts = ticker_runs(frame)[0]  # series i starts at starts[i]: one run per ticker
            series_group = np.array([known[t] for t in frame["ticker"].array[starts]], dtype=np.int64)
            group = series_group[series]
            t_loc = torch.from_numpy(t_center[group].astype(np.float32))
            t_scl = torch.from_numpy(t_scale[group].astype(np.float32))
            scaler = RowScaler(center, scale, torch.from_numpy(series), torch.from_numpy(series_group))
        x = torch.from_numpy(self.inputs(frame))
        raw = frame["target"].to_numpy()
        loc, scl = (t_center[0], t_scale[0]) if group is None else (t_center[group], t_scale[group])
        y = np.full((n, self.horizon), np.nan, dtype=np.float32)
        for h in range(1, self.horizon + 1):  # future(), one horizon at a time, in place
            at = slice(None) if group is None else slice(None, -h)  # the row's own ticker's scaling
            loc_h, scl_h = (loc, scl) if group is None else (loc[at], scl[at])
            scaled = np.subtract(raw[h:], loc_h)
            scaled /= scl_h
            scaled[series[h:] != series[:-h]] = np.nan
            y[:-h, h - 1] = scaled
            del scaled
        base = baselines.forecast_rows(raw, series, self.stats["baselines"], self.horizon, np.float32)
        base = {
            name: torch.from_numpy(b[:1].copy()).expand(n, -1) if b.strides[0] == 0 else torch.from_numpy(b)
            for name, b in base.items()
        }  # a broadcast row (the training mean) stays one row
        risk_params, tickers = self.stats.get("risk"), frame["ticker"].array
        point, risk = risk_baselines.forecast_rows(
            self.returns(frame), tickers, risk_params, self.horizon, self.target_kind, np.float32
        )

        def f32(a):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        base.update({name: f32(b) for name, b in point.items()})
        risk = {name: f32(b) for name, b in risk.items()}
        return x, torch.from_numpy(y), t_loc, t_scl, torch.from_numpy(series), base, risk, scaler

    def target_times(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Date of the first and last target day of the sample ending on each row (NaT if none)."""
        return self.end_times(frame)

    def end_times(self, frame: pd.DataFrame, rows: np.ndarray | None = None, series: np.ndarray | None = None):
        """target_times() only at `rows` (row indices) if given, in chunks: no temporary of the file's size.
        `series`: series_ids(frame), if known."""
        series = self.series_ids(frame) if series is None else series
        times, h = frame["time"].to_numpy(), self.horizon
        n = len(frame) if rows is None else len(rows)
        first = np.full(n, np.datetime64("NaT"), dtype=times.dtype)
        last = first.copy()
        for a in range(0, n, TIME_CHUNK):
            at = np.arange(a, min(a + TIME_CHUNK, n)) if rows is None else np.asarray(rows[a : a + TIME_CHUNK])
            for out, step in ((first, 1), (last, h)):
                inside = at + step < len(times)
                ahead = np.minimum(at + step, len(times) - 1)
                same = inside & (series[ahead] == series[at])
                out[a : a + len(at)] = np.where(same, times[ahead], np.datetime64("NaT"))
        return first, last

    def dataset(self, stage: str) -> WindowDataset:
        if stage in self._datasets:
            return self._datasets[stage]
        which = self.frame_key(stage)
        if which not in self.frames:
            self.setup(stage)
        frame = self.frames[which]
        if which not in self._tensors:  # train, val and test share one copy of the rows
            x, y, t_loc, t_scale, series, base, risk, scaler = self.tensors(frame)
            ends = window_ends(series, x, self.window)
            self._tensors[which] = (x, y, t_loc, t_scale, base, risk, ends, series, scaler)
            source.release()
        x, y, t_loc, t_scale, base, risk, ends, series, scaler = self._tensors[which]
        keep = None
        if stage != "predict":
            val, test = (np.datetime64(pd.Timestamp(d)) for d in (self.stats["val_start"], self.stats["test_start"]))
            start, end = (None if d is None else np.datetime64(d) for d in (self.train_start, self.test_end))
            lo, hi = {"train": (start, val), "val": (val, test), "test": (test, end)}[stage]
            if self.mode == "stream":  # stream mode also needs every row's (training rows' first days)
                first, last = self.target_times(frame)
                keep = self.split_rows(first, last, y, lo, hi)
                ends = ends[torch.from_numpy(keep[ends.numpy()])]
                days = [(first[ends.numpy()].min(), last[ends.numpy()].max())] if len(ends) else []
            else:  # only at the window ends, a block at a time: no mask or times of the file's size
                parts, days = [], []
                for a in range(0, len(ends), TIME_CHUNK):
                    at = ends[a : a + TIME_CHUNK]
                    first, last = self.end_times(frame, at.numpy(), series.numpy())
                    chosen = self.split_rows(first, last, y[at], lo, hi)
                    parts.append(at[torch.from_numpy(chosen)])
                    if chosen.any():
                        days.append((first[chosen].min(), last[chosen].max()))
                    del first, last, chosen
                ends = torch.cat(parts) if parts else ends[:0]
            if days:
                days = (pd.Timestamp(min(d[0] for d in days)), pd.Timestamp(max(d[1] for d in days)))
                self.stats.setdefault("ranges", {})[f"{stage}_targets"] = [d.isoformat() for d in days]
            if len(ends) == 0:
                raise ForecastingError(
                    f"{self.path}: the {stage} split has no windows (split times {stamp(self.stats['val_start'])} / "
                    f"{stamp(self.stats['test_start'])}, window {self.window}); move data.val_start/data.test_start"
                )
        base = None if stage == "train" else base  # baselines are scored on val/test, not trained against
        risk = None if stage == "train" else risk
        if self.mode == "stream":
            data = (x, y, t_loc, t_scale, series, ends, base, risk)
            times = (first, last) if stage != "predict" else (None, None)
            self._datasets[stage] = self.stream_dataset(stage, *data, keep, *times, scaler)
            return self._datasets[stage]
        dense = self.dense_targets and stage == "train"
        self._datasets[stage] = WindowDataset(
            x, y, t_loc, t_scale, ends, self.window, dense=dense, baselines=base, risk_baselines=risk, scaler=scaler
        )
        return self._datasets[stage]

    @staticmethod
    def split_rows(first, last, y: torch.Tensor, lo, hi) -> np.ndarray:
        """Which rows (of `first`, `last`, `y`) hold a sample of the split [lo, hi): targets known,
        all their days inside."""
        keep = ~np.isnat(last) & ~np.isnan(y.numpy()).any(1)
        if lo is not None:
            keep &= first >= lo
        if hi is not None:
            keep &= last < hi
        return keep

    def stream_dataset(self, stage, x, y, t_loc, t_scale, series, ends, base, risk, keep, first, last, scaler=None):
        """Stream mode (stream.py): training rows laid out as lanes; val/test/predict as whole series
        scoring the same rows `ends` as windowed mode."""
        bad = torch.isnan(x).any(1)
        if stage != "train":
            return stream.eval_streams(x, y, t_loc, t_scale, series, bad, ends, base, risk, scaler)
        # Every clean row whose target is a training target: windowed mode's training rows, and
        # also the first window - 1 rows of each series, which windows cannot end on.
        rows = torch.from_numpy(keep) & ~bad & ~torch.isnan(y).any(1)
        pieces = stream.runs(series, rows)
        if rows.any():  # the audit trail: stream mode also trains on each series' first window - 1 days
            days = (pd.Timestamp(first[rows.numpy()].min()), pd.Timestamp(last[rows.numpy()].max()))
            self.stats["ranges"]["train_targets"] = [d.isoformat() for d in days]
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return stream.StreamDataset(x, y, t_loc, t_scale, pieces, self.tbptt_steps, self.batch_size, seed, scaler)

    def train_dataloader(self):
        if self.mode != "stream":
            return super().train_dataloader()
        ranks = getattr(self.trainer.strategy, "distributed_sampler_kwargs", None) if self.trainer else None
        ranks = ranks or {"rank": 0, "num_replicas": 1}
        sampler = stream.StreamSampler(self.dataset("train"), ranks["rank"], ranks["num_replicas"])
        sampler.first, self._resume_step = self._resume_step, 0
        # In the main process: the sampler sets each epoch's layout on the dataset it holds.
        return DataLoader(self.dataset("train"), batch_size=1, sampler=sampler, collate_fn=keep_batch)

    def train_sampler(self, dataset):
        if not self.sharded:
            return super().train_sampler(dataset)
        # Every rank makes as many steps: the longest share sets the epoch, shorter ones repeat samples.
        length = max(sharding.gather(len(dataset)))
        return sharding.LocalSampler(dataset, length, shuffle=True, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))

    def eval_sampler(self, dataset, ranks: dict):
        # A sharded rank's val/test windows are its own already: each is scored by exactly one rank.
        return sharding.LocalSampler(dataset) if self.sharded else super().eval_sampler(dataset, ranks)

    def describe_rows(self, rows: torch.Tensor, stage: str = "predict") -> pd.DataFrame:
        """Date (full timestamp for intraday data) and ticker of the window ending at each row index."""
        which = self.frame_key(stage)
        times = self.frames[which]["time"]
        intraday = bool((times != times.dt.normalize()).any())
        frame = self.frames[which].iloc[rows.numpy()]
        dates = frame["time"] if intraday else frame["time"].dt.date
        return pd.DataFrame({"date": dates.to_numpy(), "ticker": frame["ticker"].to_numpy()})

    # ---------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict:
        state = dict(self.stats) if self.stats is not None else {}
        loop = self.trainer.fit_loop.epoch_loop if self.mode == "stream" and self.trainer is not None else None
        if loop is not None and self.trainer.state.fn.value == "fit":
            # A mid-epoch save (every_n_train_steps) runs after `processed` batches of this epoch: a
            # resume continues the same layout from there (the model restores the lanes' states).
            done = loop.batch_progress.current.processed
            if 0 < done < self.trainer.num_training_batches:
                state["stream_position"] = [self.trainer.current_epoch, done]
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        epoch_step = state.pop("stream_position", None)
        self._resume_step = epoch_step[1] if epoch_step and self.mode == "stream" else 0
        if state:
            if state.get("horizon", self.horizon) != self.horizon:
                raise ForecastingError(
                    f"the checkpoint was trained with horizon {state['horizon']}, but data.horizon={self.horizon}"
                )
            self.stats = dict(state)
            self._datasets.clear()  # rebuild with the checkpoint's scaling
            self._tensors.clear()
