from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from forecasting.data import features as F
from forecasting.data.datamodule import PriceDataModule
from forecasting.data.io import read_prices
from tests.conftest import dm_kwargs, make_prices


def ready(path, **overrides) -> PriceDataModule:
    dm = PriceDataModule(**dm_kwargs(path, **overrides))
    dm.setup("fit")
    return dm


def hand_features(prices: pd.DataFrame) -> pd.DataFrame:
    """The three default features computed directly with pandas, per ticker."""
    out = []
    for _, g in prices.groupby("ticker", sort=True):
        g = g.copy()
        g["log_return"] = np.log(g.close).diff()
        hl, co = np.log(g.high / g.low), np.log(g.close / g.open)
        g["gk_log_var"] = np.log(0.5 * hl**2 - (2 * np.log(2) - 1) * co**2)
        g["log_volume_change"] = np.log(g.volume).diff()
        out.append(g)
    frame = pd.concat(out, ignore_index=True)
    frame["date"] = pd.to_datetime(frame["date"])
    return frame


def test_scaler_is_fitted_on_training_rows_only(prices_csv, prices):
    dm = ready(prices_csv)
    val_start = pd.Timestamp(dm.stats["val_start"])
    rows = hand_features(prices)
    train = rows[rows.date < val_start]
    names = ["log_return", "gk_log_var", "log_volume_change"]
    # Features are stored as float32 (the target as float64): statistics agree to float32 precision.
    np.testing.assert_allclose(dm.stats["center"][0], train[names].mean().to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(dm.stats["scale"][0], train[names].std(ddof=0).to_numpy(), rtol=1e-6)
    assert not np.allclose(dm.stats["center"][0], rows[names].mean().to_numpy(), rtol=1e-3)  # all rows differ
    # scaled training inputs: mean 0, std 1
    x = torch.cat([b["x"][:, -1] for b in dm.train_dataloader()])
    assert x.mean(0).abs().max() < 0.1 and (x.std(0) - 1).abs().max() < 0.1


def test_split_targets_never_overlap(prices_csv, prices):
    dm = ready(prices_csv, horizon=3)
    val, test = (pd.Timestamp(dm.stats[k]) for k in ("val_start", "test_start"))
    frame = dm.frames["fit"]
    target_days = {}
    for stage in ("train", "val", "test"):
        ends = dm.dataset(stage).ends.numpy()
        # the 3 target days of the window ending at row e are rows e+1..e+3 of the same ticker
        days = {(frame.ticker[e + h], frame.time[e + h]) for e in ends for h in (1, 2, 3)}
        assert all(frame.ticker[e + 3] == frame.ticker[e] for e in ends)
        target_days[stage] = days
        times = [d for _, d in days]
        lo, hi = {"train": (None, val), "val": (val, test), "test": (test, None)}[stage]
        assert (lo is None or min(times) >= lo) and (hi is None or max(times) < hi)
    assert not target_days["train"] & target_days["val"]
    assert not target_days["train"] & target_days["test"]
    assert not target_days["val"] & target_days["test"]


def test_multi_step_targets_are_the_next_h_days_in_original_units(prices_csv, prices):
    dm = ready(prices_csv, horizon=3)
    batch = next(iter(dm.val_dataloader()))
    assert batch["y"].shape == (32, 3) and batch["x"].shape == (32, 16, 3)
    rows = hand_features(prices).sort_values(["ticker", "date"]).reset_index(drop=True)
    e = int(batch["row"][5])
    expected = rows.gk_log_var.to_numpy()[e + 1 : e + 4]
    got = (batch["y"][5] * batch["y_scale"][5] + batch["y_loc"][5]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the window's inputs are rows e-15..e, scaled
    x_last = batch["x"][5, -1].numpy() * np.array(dm.stats["scale"][0]) + np.array(dm.stats["center"][0])
    np.testing.assert_allclose(x_last, rows.loc[e, ["log_return", "gk_log_var", "log_volume_change"]], rtol=1e-4)


def test_state_dict_is_plain_and_restores_the_scaling(prices_csv, tmp_path):
    dm = ready(prices_csv, scale_per_ticker=True)
    state = dm.state_dict()
    path = tmp_path / "state.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["tickers"] == ["AAA", "BBB"] and len(loaded["center"]) == 2
    # a module set up on different data (shifted file) reproduces the original scaling once loaded
    other = make_prices(seed=1)
    other_csv = tmp_path / "other.csv"
    other.to_csv(other_csv, index=False)
    dm2 = ready(other_csv, scale_per_ticker=True)
    assert dm2.stats["center"] != state["center"]
    dm2.load_state_dict(loaded)
    assert dm2.stats["center"] == state["center"]


def test_adjust_column_removes_split_spikes(tmp_path, prices):
    raw = prices.copy()
    raw["adj_close"] = raw["close"]
    first = raw.ticker == "AAA"
    before = first & (raw.index < 100)
    for col in ("open", "high", "low", "close"):  # a 2:1 split: old prices are twice as high
        raw.loc[before, col] *= 2
    raw.loc[before, "volume"] /= 2
    path = tmp_path / "split.csv"
    raw.to_csv(path, index=False)
    spiky = ready(path)
    adjusted = ready(path, adjust_column="adj_close")
    r_spiky = spiky.frames["fit"]["f:log_return"].abs().max()
    r_adj = adjusted.frames["fit"]["f:log_return"].abs().max()
    assert r_spiky > np.log(2) - 0.1 and r_adj < 0.2
    rows = read_prices(path, "date", "ticker", adjusted.columns, "adj_close")  # the frame keeps features only
    expected = prices.sort_values(["ticker", "date"]).close.to_numpy()
    np.testing.assert_allclose(rows["close"].to_numpy(), expected, rtol=1e-9)


def test_parquet_and_single_series_without_ticker(tmp_path, prices):
    single = prices[prices.ticker == "AAA"].drop(columns="ticker")
    path = tmp_path / "one.parquet"
    single.to_parquet(path)
    dm = ready(path, ticker_column=None)
    assert dm.frames["fit"]["ticker"].unique().tolist() == ["series"]
    assert len(dm.dataset("train")) > 100


def test_minmax_and_robust_scalers_in_center_scale_form(prices_csv):
    for name in ("minmax", "robust", "none"):
        dm = ready(prices_csv, scaler=name)
        x = torch.cat([b["x"][:, -1] for b in dm.train_dataloader()])
        if name == "minmax":
            assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5
        if name == "robust":
            assert x.median(0).values.abs().max() < 0.1
    assert dm.stats["center"] == [[0.0, 0.0, 0.0]]


def test_predict_covers_the_latest_window_without_a_target(prices_csv):
    dm = ready(prices_csv)
    ds = dm.dataset("predict")
    last_row = len(dm.frames["fit"][dm.frames["fit"].ticker == "AAA"]) - 1
    assert last_row in ds.ends.tolist()  # tomorrow's forecast: no target yet
    assert torch.isnan(ds.__getitems__([ds.ends.tolist().index(last_row)])["y"]).all()


def test_custom_transform_registers_by_name(prices_csv):
    @F.transform("close")
    def log_close_test(f):
        return np.log(f["close"].to_numpy())

    try:
        dm = ready(prices_csv, features=["log_close_test"], target="log_return")
        assert dm.n_features == 1 and dm.frames["fit"]["f:log_close_test"].iloc[0] == pytest.approx(
            np.log(50.0), rel=0.1
        )
    finally:
        del F.TRANSFORMS["log_close_test"]


def test_batches_are_pinned_for_a_gpu_and_training_batches_carry_no_baselines(prices_csv):
    dm = PriceDataModule(**dm_kwargs(prices_csv))
    dm.setup("fit")
    assert not dm.loader("train").pin_memory  # no trainer (or a CPU one): nothing to pin for
    strategy = SimpleNamespace(root_device=torch.device("cuda", 0), distributed_sampler_kwargs=None)
    dm.trainer = SimpleNamespace(strategy=strategy)
    assert dm.loader("train").pin_memory and dm.loader("val").pin_memory
    train, val = dm.dataset("train"), dm.dataset("val")
    assert train.__getitems__([0, 1])["baselines"] == {}  # scored on val/test only: not copied every step
    # GARCH joins log-variance targets' table
    assert set(val.__getitems__([0, 1])["baselines"]) == {"naive", "mean", "har", "garch"}
