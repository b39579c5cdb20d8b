"""Property test: on any small frame the data module either refuses it clearly or yields sound windows."""

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecasting.data.datamodule import PriceDataModule
from forecasting.errors import ForecastingError


@st.composite
def frames(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pieces = []
    for k in range(draw(st.integers(1, 3))):
        n = draw(st.integers(5, 80))
        days = pd.bdate_range("2021-01-01", periods=int(n * 1.5))
        keep = np.sort(rng.choice(len(days), size=n, replace=False))  # random gaps
        level = draw(st.sampled_from([1e-4, 1.0, 1e6]))  # extreme but valid price levels
        close = level * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
        open_ = close * np.exp(rng.normal(0, 0.01, n))
        pieces.append(
            pd.DataFrame(
                {
                    "date": days[keep].strftime("%Y-%m-%d"),
                    "ticker": f"T{k}",
                    "open": open_,
                    "high": np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.01, n))),
                    "low": np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.01, n))),
                    "close": close,
                    "volume": np.round(draw(st.sampled_from([10.0, 1e12])) * np.exp(rng.normal(0, 0.3, n))) + 1,
                }
            )
        )
    frame = pd.concat(pieces, ignore_index=True)
    return frame.sample(frac=1, random_state=0)  # shuffled rows: the module must sort


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=frames(), window=st.integers(2, 12), horizon=st.integers(1, 3))
def test_windows_are_sound_or_the_error_is_ours(tmp_path, frame, window, horizon):
    path = tmp_path / "random.csv"
    frame.to_csv(path, index=False)
    dm = PriceDataModule(path=str(path), window=window, horizon=horizon, val_start=0.6, test_start=0.8)
    try:
        dm.setup("fit")
        datasets = {stage: dm.dataset(stage) for stage in ("train", "val", "test")}
    except ForecastingError:
        return  # too short, an empty split, ...: refused with the project's own message
    rows = dm.frames["fit"]
    ticker, time = rows["ticker"].to_numpy(), rows["time"].to_numpy()
    val, test = (np.datetime64(pd.Timestamp(dm.stats[k])) for k in ("val_start", "test_start"))
    bounds = {"train": (None, val), "val": (val, test), "test": (test, None)}
    for stage, ds in datasets.items():
        ends = ds.ends.numpy()
        # no window crosses a ticker; all target days lie in the split
        assert (ticker[ends - window + 1] == ticker[ends]).all() and (ticker[ends + horizon] == ticker[ends]).all()
        lo, hi = bounds[stage]
        first, last = time[ends + 1], time[ends + horizon]
        assert (lo is None or (first >= lo).all()) and (hi is None or (last < hi).all())
        batch = ds.__getitems__(list(range(len(ds))))
        assert torch.isfinite(batch["x"]).all() and torch.isfinite(batch["y"]).all()
        # inverse scaling returns the original target values
        original = batch["y"] * batch["y_scale"] + batch["y_loc"]
        expected = np.stack([rows["f:gk_log_var"].to_numpy()[ends + h] for h in range(1, horizon + 1)], 1)
        np.testing.assert_allclose(original.numpy(), expected, rtol=1e-4, atol=1e-4)
    train_rows = rows[rows["time"] < pd.Timestamp(dm.stats["val_start"])]
    x = (train_rows[[f"f:{n}" for n in dm.features]].to_numpy() - dm.stats["center"][0]) / dm.stats["scale"][0]
    assert np.nanmean(x, 0) == pytest.approx(0, abs=1e-6) and np.nanstd(x, 0) == pytest.approx(1, abs=1e-6)


def test_extreme_but_valid_inputs_train_without_overflow(tmp_path):
    import lightning as L

    from forecasting.models.forecaster import Forecaster
    from tests.conftest import make_prices

    frame = make_prices(tickers=("TINY", "HUGE"))
    for ticker, level in (("TINY", 1e-4), ("HUGE", 1e6)):
        rows = frame.ticker == ticker
        frame.loc[rows, ["open", "high", "low", "close"]] *= level / frame.loc[rows, "close"].iloc[0]
    frame["volume"] *= 1e6  # around 1e12 shares
    path = tmp_path / "extreme.csv"
    frame.to_csv(path, index=False)
    dm = PriceDataModule(path=str(path), window=16, val_start=0.6, test_start=0.8)
    model = Forecaster(n_features=3)
    trainer = L.Trainer(accelerator="cpu",
                        max_steps=20, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=2)  # fmt: skip
    trainer.fit(model, dm)
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    ds = dm.dataset("train")
    x = ds.__getitems__(list(range(len(ds))))["x"]
    assert x.abs().max() < 20  # the transforms and the scaler keep inputs O(1) whatever the price level
