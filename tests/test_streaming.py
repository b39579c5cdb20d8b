"""The streaming API: warm on the history once, then one day in, one forecast out, equal to the
model run over the whole series in one call (stream-mode predict)."""

import lightning as L
import pandas as pd
import pytest
import torch

from forecasting.data.datamodule import PriceDataModule
from forecasting.errors import ForecastingError
from forecasting.streaming import Streamer
from tests.conftest import dm_kwargs
from tests.test_stream import model


@pytest.fixture
def checkpoint(prices_csv, tmp_path):
    dm = PriceDataModule(**dm_kwargs(prices_csv, mode="stream", tbptt_steps=8, batch_size=4))
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, max_steps=3,
    )  # fmt: skip
    trainer.fit(model(tbptt_steps=8), dm)
    path = tmp_path / "stream.ckpt"
    trainer.save_checkpoint(path)
    return path


def stream_predictions(path, prices_csv) -> dict:
    """(ticker, date) -> forecast of stream-mode predict over the whole file."""
    m = model(tbptt_steps=8)
    m.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    dm = PriceDataModule(**dm_kwargs(prices_csv, mode="stream", tbptt_steps=8, predict_path=str(prices_csv)))
    dm.load_state_dict(torch.load(path, weights_only=True)["PriceDataModule"])
    dm.setup("predict")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    (out,) = trainer.predict(m, datamodule=dm)  # both tickers in one batch: one walk each
    where = dm.describe_rows(out["row"])
    forecasts = out["forecast"][:, 0].tolist()
    return {(t, str(d)): f for t, d, f in zip(where["ticker"], where["date"], forecasts, strict=True)}


def test_update_one_day_at_a_time_equals_one_call_over_the_history(checkpoint, prices, prices_csv):
    expected = stream_predictions(checkpoint, prices_csv)
    dates = sorted(prices["date"].unique())
    cut = dates[200]
    streamer = Streamer.from_checkpoint(checkpoint, prices[prices["date"] < cut])
    for ticker in ("AAA", "BBB"):  # the forecast after the history's last close
        row = streamer.forecast.query("ticker == @ticker").iloc[0]
        assert row["forecast"] == pytest.approx(expected[(ticker, str(pd.Timestamp(dates[199]).date()))], abs=1e-5)
    checked = 0
    for _, new in prices[(prices["date"] >= cut) & (prices["date"] < dates[230])].iterrows():
        got = streamer.update(new)
        assert len(got) == 1 and got["ticker"].iat[0] == new["ticker"]
        want = expected[(new["ticker"], str(pd.Timestamp(new["date"]).date()))]
        assert got["forecast"].iat[0] == pytest.approx(want, abs=1e-5)
        checked += 1
    assert checked == 60


def test_update_refuses_unknown_tickers_and_old_days(checkpoint, prices):
    streamer = Streamer.from_checkpoint(checkpoint, prices.iloc[:-5])
    new = prices.iloc[-5].to_dict()
    with pytest.raises(ForecastingError, match="'ZZZ' is not in the history"):
        streamer.update({**new, "ticker": "ZZZ"})
    with pytest.raises(ForecastingError, match="is not after its last one"):
        streamer.update(prices.iloc[-6].to_dict())
