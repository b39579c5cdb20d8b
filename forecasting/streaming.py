"""Live forecasting: warm a fitted model on the history once, then one new day in, the next
forecast out, in O(1) per day (one recurrent step per ticker, its state kept in between).

    from forecasting.streaming import Streamer

    streamer = Streamer.from_checkpoint("logs/stream/version_0/checkpoints/last.ckpt", "data/stocks.csv")
    streamer.forecast                  # the forecast made after the history's last close, per ticker
    streamer.update({"date": "2013-03-04", "ticker": "AAPL", "open": ..., "high": ..., "low": ...,
                     "close": ..., "volume": ..., "adj_close": ...})   # -> that ticker's next forecast

The history (a file path or a DataFrame in the training file's format) is read and checked
like `data.predict_path`, scaled with the checkpoint's scaler, and walked once (O(days)). A
new row has the history file's columns; its features are computed from the last rows of its
ticker (as many as the transforms' warm-up needs: a transform must depend on no more rows
than its declared `warmup`, as the built-in ones do). The forecast equals the one the model
makes over the whole series in one call (tests/test_streaming.py). Works with checkpoints of
any training mode whose network carries a state (an LSTM or GRU); see docs/tbptt.md.
"""

import inspect
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from forecasting.data import features as F
from forecasting.data.datamodule import PriceDataModule
from forecasting.data.io import read_prices
from forecasting.data.stream import runs
from forecasting.errors import ForecastingError
from forecasting.models import contract
from forecasting.models.forecaster import Forecaster


class Streamer:
    def __init__(self, model: Forecaster, dm: PriceDataModule):
        self.model, self.dm = model.eval(), dm
        self.states: dict[str, object] = {}  # ticker -> the network's state after its last row
        self.tails: dict[str, pd.DataFrame] = {}  # ticker -> its last rows (what the transforms need)
        self.last: dict[str, tuple] = {}  # ticker -> (time of its last row, forecast in original units)
        names = [*dm.features, dm.target]
        self.keep_rows = max(F.warmup(n) for n in names) + 1

    @classmethod
    def from_checkpoint(cls, path: str, history: str | Path | pd.DataFrame) -> "Streamer":
        """A fitted checkpoint of PriceDataModule data, warmed on `history` (path or frame)."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = Forecaster.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        hparams = ckpt.get("datamodule_hyper_parameters") or {}
        args = set(inspect.signature(PriceDataModule.__init__).parameters)
        kwargs = {k: v for k, v in hparams.items() if k in args}
        kwargs["tbptt_steps"] = model.hparams.tbptt_steps  # the model's key (stream mode's chunk length)
        dm = PriceDataModule(**kwargs)
        dm.load_state_dict(ckpt.get(PriceDataModule.__qualname__) or {})
        if dm.stats is None:
            raise ForecastingError(f"{path}: no PriceDataModule scaler in the checkpoint; stream from a fitted one")
        streamer = cls(model, dm)
        if isinstance(history, pd.DataFrame):
            with tempfile.TemporaryDirectory() as tmp:
                file = Path(tmp) / "history.csv"
                history.to_csv(file, index=False)
                streamer.warm(file)
        else:
            streamer.warm(history)
        return streamer

    @torch.no_grad()
    def warm(self, path) -> None:
        """Walk the history once: each ticker's state after its last row, and its forecast."""
        dm = self.dm
        dm.predict_path = str(path)
        dm.frames.pop("predict", None)
        dm.setup("predict")
        frame = dm.frames["predict"]
        x, _, loc, scale, series, *_, scaler = dm.tensors(frame)
        for start, n in runs(series, ~torch.isnan(x).any(1)):
            ticker = frame["ticker"].iat[start]
            if start + n < len(series) and series[start + n] == series[start]:
                continue  # not the ticker's last clean run: a later one starts after a bad row
            out, state = contract.call(self.model.net, scaler(x[None, start : start + n], torch.tensor([start])))
            self.states[ticker] = state
            end = start + n - 1
            self.last[ticker] = (frame["time"].iat[end], self.point(out[0, -1]) * scale[end] + loc[end])
        # The transforms of a new day need the last raw prices: the data module keeps only features.
        raw = read_prices(
            path, dm.time_column, dm.ticker_column, dm.columns, dm.adjust_column, dm.date_format,
            dm.missing, dm.timezone, dm.bad_values, dm.max_flat_rows, tickers=dm.tickers,
        )  # fmt: skip
        raw["ticker"] = raw["ticker"].astype(str)
        for ticker, rows in raw.groupby("ticker", sort=False):
            self.tails[ticker] = rows.drop(columns="line").tail(self.keep_rows).reset_index(drop=True)
        missing = sorted(set(self.tails) - set(self.states))
        if missing:
            raise ForecastingError(f"{path}: tickers {missing} end on a row whose features are not finite")

    def point(self, out: torch.Tensor) -> torch.Tensor:
        """The point forecast (H,) in scaled units from one step's outputs (the model's head:
        a mean or median, which unscale like the target)."""
        return self.model.head.point(self.model.head(out[None]))[0]

    @property
    def forecast(self) -> pd.DataFrame:
        """The latest forecast of every ticker: made after the close of `date`, h days ahead."""
        rows = [
            {"date": time, "ticker": t, "h": h + 1, "target": self.dm.target, "forecast": float(f[h])}
            for t, (time, f) in self.last.items()
            for h in range(len(f))
        ]
        return pd.DataFrame(rows)

    def standardise(self, row: dict) -> dict:
        """A row in the file's format as read_prices makes it: time, ticker, the named columns."""
        dm = self.dm
        ticker = str(row[dm.ticker_column]).strip() if dm.ticker_column else "series"
        time = pd.Timestamp(row[dm.time_column])
        if time.tzinfo is not None:
            time = time.tz_convert(dm.timezone).tz_localize(None)
        out = {"time": time, "ticker": ticker}
        out.update({name: float(row[column]) for name, column in dm.columns.items()})
        if dm.adjust_column is not None and "close" in dm.columns:
            factor = float(row[dm.adjust_column]) / out["close"]
            for name in ("open", "high", "low", "close"):
                if name in out:
                    out[name] *= factor
            if "volume" in out:
                out["volume"] /= factor
        return out

    @torch.no_grad()
    def update(self, row: dict | pd.Series) -> pd.DataFrame:
        """Take one new day of one ticker; return its forecast made after that day's close."""
        new = self.standardise(dict(row))
        ticker, dm = new["ticker"], self.dm
        if ticker not in self.states:
            raise ForecastingError(f"streaming: ticker '{ticker}' is not in the history; warm it first")
        last_time = self.last[ticker][0]
        if new["time"] <= last_time:
            raise ForecastingError(f"streaming: {ticker} row of {new['time']} is not after its last one ({last_time})")
        tail = pd.concat([self.tails[ticker], pd.DataFrame([new])], ignore_index=True).tail(self.keep_rows)
        tail = tail.reset_index(drop=True)
        values = np.array([F.compute(tail, name)[-1] for name in dm.features])
        if not np.isfinite(values).all():
            raise ForecastingError(f"streaming: {ticker} row of {new['time']} gives non-finite features {values}")
        group = 0 if dm.stats["tickers"] == ["*"] else dm.stats["tickers"].index(ticker)
        center, spread = np.asarray(dm.stats["center"][group]), np.asarray(dm.stats["scale"][group])
        x = torch.tensor((values - center) / spread, dtype=torch.float32).view(1, 1, -1)
        out, self.states[ticker] = contract.call(self.model.net, x, self.states[ticker])
        forecast = self.point(out[0, -1]) * dm.stats["target_scale"][group] + dm.stats["target_center"][group]
        self.tails[ticker], self.last[ticker] = tail, (new["time"], forecast)
        table = self.forecast
        return table[table["ticker"] == ticker].reset_index(drop=True)
