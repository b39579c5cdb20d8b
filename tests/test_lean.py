"""The lean data path equals today's (tests/reference_pipeline.py): tensors, splits, scaler and baselines.

Window ends, split ranges, naive forecasts and tickers must be identical; features are stored as
float32 before scaling (the target as float64), so scaled inputs and scaler statistics agree to
float32 precision, targets and baselines to float64 rounding.
"""

import contextlib

import numpy as np
import pandas as pd
import pytest
import torch

from forecasting.data.datamodule import PriceDataModule
from forecasting.errors import ForecastingError
from tests.conftest import ROOT, dm_kwargs, make_prices
from tests.reference_pipeline import OldPriceDataModule


def inputs(dataset) -> torch.Tensor:
    """Every window of a data set as the model gets it: scaled as the batch is gathered."""
    return dataset.__getitems__(list(range(len(dataset))))["x"]


def assert_same(new: PriceDataModule, old: PriceDataModule) -> None:
    new.setup("fit")
    old.setup("fit")
    a, b = new.stats, old.stats
    assert a["tickers"] == b["tickers"] and a["ranges"] == b["ranges"]
    assert (a["val_start"], a["test_start"]) == (b["val_start"], b["test_start"])
    np.testing.assert_allclose(a["center"], b["center"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(a["scale"], b["scale"], rtol=1e-6)
    np.testing.assert_allclose(a["target_center"], b["target_center"], rtol=1e-12)
    np.testing.assert_allclose(a["target_scale"], b["target_scale"], rtol=1e-12)
    np.testing.assert_allclose(a["baselines"]["target_mean"], b["baselines"]["target_mean"], rtol=1e-12)
    if b["baselines"]["har_beta"] is not None:
        np.testing.assert_allclose(a["baselines"]["har_beta"], b["baselines"]["har_beta"], rtol=1e-6)
    for stage in ("train", "val", "test"):
        x, y = new.dataset(stage), old.dataset(stage)
        assert torch.equal(x.ends, y.ends), stage
        rows = x.ends
        torch.testing.assert_close(inputs(x), inputs(y), rtol=0, atol=2e-5, equal_nan=True)  # float32, then scaled
        torch.testing.assert_close(x.y[rows], y.y[rows], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(x.target_loc[rows], y.target_loc[rows], rtol=0, atol=0)
        torch.testing.assert_close(x.target_scale[rows], y.target_scale[rows], rtol=0, atol=0)
        assert set(y.baselines) <= set(x.baselines)  # and GARCH's, which came later (risk_baselines.py)
        for name in y.baselines:
            exact = 0 if name == "naive" else 1e-5
            torch.testing.assert_close(x.baselines[name][rows], y.baselines[name][rows], rtol=exact, atol=exact)
    assert a["ranges"] == b["ranges"]  # datasets add their target ranges: still the same
    frame, reference = new.frames["fit"], old.frames["fit"]
    assert frame["ticker"].tolist() == reference["ticker"].tolist()
    assert (frame["time"].to_numpy() == reference["time"].to_numpy()).all()
    assert (frame["line"].to_numpy() == reference["line"].to_numpy()).all()


def test_bundled_data_equals_todays_path():
    kwargs = dict(path=str(ROOT / "data/stocks.csv"), window=64)
    assert_same(PriceDataModule(**kwargs), OldPriceDataModule(**kwargs))


def synthetic(tmp_path, name="multi.csv"):
    """Five tickers, one too short for a window, rows shuffled, a bad row and (CSV) an empty cell."""
    frame = make_prices(160, ("EEE", "AAA", "DDD", "CCC", "01"), seed=3)
    frame = pd.concat([frame, make_prices(10, ("ZZZ",), seed=4)], ignore_index=True)
    frame.loc[50, "volume"] = 0.0  # flagged: handed to data.missing
    if name.endswith(".csv"):
        frame = frame.astype({"close": object})
        frame.loc[400, "close"] = ""
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    path = tmp_path / name
    frame.to_parquet(path) if name.endswith(".parquet") else frame.to_csv(path, index=False)
    return path


CASES = {
    "default": {},
    "per ticker, robust, horizon 3": dict(scale_per_ticker=True, scaler="robust", horizon=3),
    "minmax, 4 features, drop": dict(
        scaler="minmax", missing="drop", features=["log_return", "gk_log_var", "log_range", "log_volume_change"]
    ),
    "log returns, train_start, tickers": dict(
        target="log_return", train_start="2020-02-03", tickers=["AAA", "01", "DDD"]
    ),
}


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_synthetic_multi_ticker_file_equals_todays_path(tmp_path, overrides):
    kwargs = dm_kwargs(synthetic(tmp_path), bad_values="missing", **{"missing": "ffill", **overrides})
    new, old = PriceDataModule(**kwargs), OldPriceDataModule(**kwargs)
    for dm in (new, old):  # ZZZ has 10 rows, fewer than a window: skipped (unless not selected at all)
        with pytest.warns(UserWarning, match="ZZZ") if "tickers" not in overrides else contextlib.nullcontext():
            dm.setup("fit")
    assert_same(new, old)
    # The data-quality report too (the lean path reads only the tickers named in data.tickers).
    (_, report), (_, reference) = next(iter(new.quality.items())), next(iter(old.quality.items()))
    assert report == {t: reference[t] for t in report} and len(report) == len(overrides.get("tickers", reference))


def test_parquet_folder_partitioned_by_ticker_equals_one_file(tmp_path):
    path = synthetic(tmp_path, "one.parquet")
    frame = pd.read_parquet(path)
    frame = frame[frame.ticker != "ZZZ"]
    folder = tmp_path / "by_ticker"
    frame.to_parquet(folder, partition_cols=["ticker"])  # by_ticker/ticker=AAA/....parquet
    kwargs = dict(bad_values="missing", missing="ffill", tickers=["AAA", "CCC"])
    one = PriceDataModule(**dm_kwargs(path, **kwargs))
    hive = PriceDataModule(**dm_kwargs(folder, **kwargs))
    one.setup("fit")
    hive.setup("fit")
    assert one.stats == hive.stats
    torch.testing.assert_close(inputs(one.dataset("train")), inputs(hive.dataset("train")), rtol=0, atol=0)
    assert set(hive.frames["fit"]["ticker"]) == {"AAA", "CCC"}


def test_an_error_in_a_selected_ticker_names_its_row_in_the_file(tmp_path):
    frame = make_prices(120, ("AAA", "BBB", "CCC"))
    frame.loc[250, "volume"] = -1.0  # ticker CCC (rows 240..359): row 251 of the file
    frame.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(ForecastingError, match="row 251, column 'volume'"):
        PriceDataModule(**dm_kwargs(tmp_path / "p.parquet", tickers=["CCC"])).setup("fit")


def test_a_csv_is_parsed_once_then_read_from_its_parquet_cache(tmp_path, monkeypatch):
    path = synthetic(tmp_path)
    kwargs = dm_kwargs(path, bad_values="missing", missing="ffill", cache_dir=str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="ZZZ"):
        first = PriceDataModule(**kwargs)
        first.setup("fit")
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".parquet"
    parsed = []
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: parsed.append(a) or pytest.fail("CSV parsed again"))
    with pytest.warns(UserWarning, match="ZZZ"):
        second = PriceDataModule(**kwargs)
        second.setup("fit")
    assert not parsed and first.stats == second.stats
    torch.testing.assert_close(inputs(first.dataset("val")), inputs(second.dataset("val")), rtol=0, atol=0)
    assert second.quality == first.quality
    monkeypatch.undo()
    path.write_text(path.read_text().replace("EEE", "FFF"))  # an edit: new size or mtime, new cache
    with pytest.warns(UserWarning, match="ZZZ"):
        third = PriceDataModule(**kwargs)
        third.setup("fit")
    assert "FFF" in third.stats["ranges"] or "FFF" in set(third.frames["fit"]["ticker"])
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_a_refused_csv_leaves_no_cache(tmp_path):
    frame = make_prices(120)
    frame.loc[30, "volume"] = 0.0
    frame.to_csv(tmp_path / "bad.csv", index=False)
    cache = tmp_path / "logs" / "data_cache"
    with pytest.raises(ForecastingError, match="line 32, column 'volume'"):
        PriceDataModule(**dm_kwargs(tmp_path / "bad.csv", cache_dir=str(cache))).setup("fit")
    assert not (tmp_path / "logs").exists()
    # Errors after reading (an empty split) leave none either, when Lightning's prepare_data runs the checks.
    make_prices(120).to_csv(tmp_path / "ok.csv", index=False)
    dm = PriceDataModule(**dm_kwargs(tmp_path / "ok.csv", cache_dir=str(cache), val_start="2030-01-01",
                                     test_start="2031-01-01"))  # fmt: skip
    dm.trainer = type("T", (), {"state": type("S", (), {"fn": type("F", (), {"value": "fit"})})(), "logger": None})()
    with pytest.raises(ForecastingError, match="split has no windows"):
        dm.prepare_data()
    assert not (tmp_path / "logs").exists()


# Blocks: the built-in transforms over blocks of whole tickers, window ends and split ends a block at a
# time, the risk baselines' recursions as linear filters: the same rows as one ticker / one row at a time.
def test_blocks_of_tickers_and_rows_give_the_per_ticker_results(tmp_path, monkeypatch):
    from forecasting.data import datamodule as module
    from forecasting.data import features as F

    kwargs = dm_kwargs(synthetic(tmp_path), bad_values="missing", missing="ffill", window=16, horizon=2)
    with pytest.warns(UserWarning, match="ZZZ"):
        reference = PriceDataModule(**kwargs)
        monkeypatch.setattr(F, "rowwise", lambda name: False)  # every transform one ticker's frame at a time
        reference.setup("fit")
    monkeypatch.undo()
    for block in (7, 100, 1 << 20):  # rows per block: smaller than a ticker, a few tickers, the whole file
        monkeypatch.setattr(module, "BLOCK_ROWS", block)
        monkeypatch.setattr(module, "TIME_CHUNK", block)
        with pytest.warns(UserWarning, match="ZZZ"):
            dm = PriceDataModule(**kwargs)
            dm.setup("fit")
        pd.testing.assert_frame_equal(dm.frames["fit"], reference.frames["fit"])
        assert dm.stats["baselines"] == reference.stats["baselines"] and dm.stats["risk"] == reference.stats["risk"]
        for stage in ("train", "val", "test"):
            a, b = dm.dataset(stage), reference.dataset(stage)
            assert torch.equal(a.ends, b.ends), (block, stage)
            torch.testing.assert_close(a.x, b.x, rtol=0, atol=0, equal_nan=True)
        assert dm.stats["ranges"] == reference.stats["ranges"]


def test_a_built_in_style_transform_names_the_same_row_in_blocks_as_per_ticker(tmp_path, monkeypatch):
    from forecasting.data import datamodule as module
    from forecasting.data import features as F

    frame = make_prices(120, ("AAA", "BBB", "CCC"))
    frame.loc[frame.index[(frame.ticker == "BBB")][40], "volume"] = 777.0  # the transform's poison value
    frame.to_parquet(tmp_path / "p.parquet")

    def poisoned(f):
        v = f["volume"].to_numpy()
        return np.where(v == 777.0, np.inf, np.log(v))

    messages = []
    for rowwise in (False, True):
        monkeypatch.setitem(F.TRANSFORMS, "poisoned", F.Transform(poisoned, ("volume",), 0, rowwise))
        monkeypatch.setattr(module, "BLOCK_ROWS", 50)
        with pytest.raises(ForecastingError, match="transform 'poisoned' is not finite for ticker 'BBB'") as err:
            PriceDataModule(**dm_kwargs(tmp_path / "p.parquet", features=["log_return", "poisoned"])).setup("fit")
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "row 161" in messages[0]


def test_risk_recursions_equal_the_step_by_step_loop():
    from forecasting import risk_baselines as rb

    rng = np.random.default_rng(1)
    returns = 0.01 * rng.standard_normal(600)
    returns[[0, 200, 350, 351, 400]] = np.nan  # each ticker's first row, and gaps
    ticker = np.repeat(["A", "B", "C"], 200)
    var0 = {"A": 1e-4, "B": float("nan"), "C": 2e-4}
    coefficients = {"A": (0.9, 0.08, 1e-6, 1e-3), "C": (0.94, 0.06, 0.0, 0.0)}  # B: NaN start; C: EWMA's form

    def loop(t, r):  # the former one-row-at-a-time recursion
        out, s2 = [], var0[t]
        for value in r:
            if np.isfinite(value):
                decay, gain, level, mu = coefficients.get(t, (np.nan,) * 4)
                s2 = level + gain * (value - mu) ** 2 + decay * s2
            out.append(s2)
        return np.array(out)

    got = rb.one_step_variance(returns, ticker, var0, coefficients.get)
    expected = np.concatenate([loop(t, returns[ticker == t]) for t in ("A", "B", "C")])
    np.testing.assert_allclose(got, expected, rtol=1e-13, equal_nan=True)
    assert np.isnan(got[200:400]).all() and got[0] == var0["A"]
    with pytest.raises(ValueError, match="contiguous"):
        rb.runs(np.array(["A", "B", "A"]))


def test_checkpoint_statistics_replace_the_fitted_ones_as_a_fresh_build_with_them(tmp_path):
    path = synthetic(tmp_path, "p.parquet")
    kwargs = dm_kwargs(path, bad_values="missing", missing="ffill", tickers=["AAA", "CCC", "DDD"])
    fitted = PriceDataModule(**kwargs)
    fitted.setup("fit")
    before = inputs(fitted.dataset("val"))
    other = PriceDataModule(**{**kwargs, "tickers": ["AAA", "EEE"]})  # another file's statistics
    other.setup("fit")
    fresh = PriceDataModule(**kwargs)
    fresh.load_state_dict(other.state_dict())
    fresh.setup("fit")
    fitted.load_state_dict(other.state_dict())  # after its own build: rebuilt with the checkpoint's scaling
    for stage in ("train", "val", "test"):
        a, b = fitted.dataset(stage), fresh.dataset(stage)
        assert torch.equal(a.ends, b.ends)
        torch.testing.assert_close(inputs(a), inputs(b), rtol=0, atol=0)
        torch.testing.assert_close(a.y, b.y, rtol=0, atol=0, equal_nan=True)
    assert not torch.allclose(before, inputs(fitted.dataset("val")))


def with_raw_column(tmp_path, name="raw.parquet", shuffle=False, **write):
    """The synthetic prices plus a numeric column `x0` used raw as a feature."""
    frame = make_prices(120, ("AAA", "BBB", "CCC"), seed=5)
    frame["x0"] = np.random.default_rng(5).standard_normal(len(frame)) * 3 + 1
    if shuffle:
        frame = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
    path = tmp_path / name
    frame.to_parquet(path, **write)
    return path, frame


RAW = dict(columns={c: c for c in ("open", "high", "low", "close", "volume", "x0")},
           features=["log_return", "gk_log_var", "x0"])  # fmt: skip


@pytest.mark.parametrize("per_ticker", [False, True], ids=["one scaler", "per ticker"])
def test_the_model_reads_the_frames_own_features_scaled_batch_by_batch(tmp_path, per_ticker):
    path, _ = with_raw_column(tmp_path)
    dm = PriceDataModule(**dm_kwargs(path, scale_per_ticker=per_ticker, **RAW))
    dm.setup("fit")
    train = dm.dataset("train")
    frame, x = dm.frames["fit"], dm._tensors["fit"][0]
    # one copy of the features: the frame's columns are views of the matrix the windows read
    assert x.dtype == torch.float32 and x.shape == (len(frame), 3)
    for j, name in enumerate(RAW["features"]):
        column = frame[f"f:{name}"].to_numpy()
        assert column.dtype == np.float32 and np.shares_memory(column, x.numpy())
        np.testing.assert_array_equal(column, x.numpy()[:, j])
    assert frame["target"].dtype == np.float64  # the target keeps full precision
    # a batch holds exactly (x - center) / scale of each window's ticker, in float32
    batch = train.__getitems__(list(range(0, len(train), 7)))
    tickers = list(dm.stats["tickers"])
    for k, end in enumerate(batch["row"].tolist()):
        rows = frame.iloc[end - dm.window + 1 : end + 1]
        g = 0 if tickers == ["*"] else tickers.index(rows["ticker"].iloc[-1])
        center, scale = (np.asarray(dm.stats[key][g], dtype=np.float32) for key in ("center", "scale"))
        raw = rows[[f"f:{n}" for n in RAW["features"]]].to_numpy()
        np.testing.assert_array_equal(batch["x"][k].numpy(), (raw - center) / scale)
        # and within float32 rounding of the scaling in float64
        exact = (raw.astype(np.float64) - dm.stats["center"][g]) / dm.stats["scale"][g]
        np.testing.assert_allclose(batch["x"][k].numpy(), exact, rtol=0, atol=2e-6)


def test_a_raw_column_beyond_float32_is_refused_naming_its_row(tmp_path):
    frame = make_prices(120, ("AAA", "BBB"), seed=5)
    frame["x0"] = 1.0
    frame.loc[150, "x0"] = 1e39  # a finite float64, infinite as the float32 feature
    frame.to_parquet(tmp_path / "big.parquet")
    dm = PriceDataModule(**dm_kwargs(tmp_path / "big.parquet", **RAW))
    with pytest.raises(ForecastingError, match=r"row 151: transform 'x0' is not finite for ticker 'BBB'"):
        dm.setup("fit")


def test_flat_closes_judged_in_blocks_as_in_one_pass(monkeypatch):
    from forecasting.data import io

    rng = np.random.default_rng(0)
    close = np.repeat(rng.integers(0, 3, 400).astype(float), rng.integers(1, 40, 400))  # runs of 1..39 rows
    ticker = np.repeat(np.arange(7), -(-len(close) // 7))[: len(close)]  # tickers cut through some runs
    same = np.r_[False, (close[1:] == close[:-1]) & (ticker[1:] == ticker[:-1])]
    run = np.cumsum(~same)
    expected = same & (np.bincount(run) >= 20)[run]  # the one-pass rule
    monkeypatch.setattr(io, "CHECK_ROWS", 13)  # many blocks, most runs crossing one
    got = io.flat_runs(close, ticker, 20)
    assert expected.sum() > 50 and np.array_equal(got, expected)


@pytest.mark.parametrize("shuffle", [False, True], ids=["sorted", "shuffled"])
def test_row_groups_read_one_at_a_time_give_the_same_rows(tmp_path, shuffle):
    one, _ = with_raw_column(tmp_path, "one.parquet", shuffle)
    many, _ = with_raw_column(tmp_path, "many.parquet", shuffle, row_group_size=37)  # tickers straddle groups
    for tickers in (None, ["BBB"], ["AAA", "CCC"]):
        a = PriceDataModule(**dm_kwargs(one, tickers=tickers, **RAW))
        b = PriceDataModule(**dm_kwargs(many, tickers=tickers, **RAW))
        a.setup("fit")
        b.setup("fit")
        pd.testing.assert_frame_equal(a.frames["fit"], b.frames["fit"])
        assert a.stats == b.stats
        torch.testing.assert_close(inputs(a.dataset("val")), inputs(b.dataset("val")), rtol=0, atol=0)
