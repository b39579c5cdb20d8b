"""Time is a timestamp: intraday splits, time zones, integer and epoch dates, full timestamps kept."""

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecasting.data.datamodule import PriceDataModule
from forecasting.errors import ForecastingError
from tests.conftest import dm_kwargs, make_prices


def hourly(n=300, tickers=("AAA", "BBB")) -> pd.DataFrame:
    frame = make_prices(n, tickers)
    frame["date"] = np.tile(pd.date_range("2020-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M"), len(tickers))
    return frame


def module(tmp_path, frame, name="p.csv", **overrides) -> PriceDataModule:
    path = tmp_path / name
    frame.to_parquet(path) if name.endswith(".parquet") else frame.to_csv(path, index=False)
    dm = PriceDataModule(**dm_kwargs(path, **overrides))
    dm.setup("fit")
    for stage in ("train", "val", "test"):
        dm.dataset(stage)
    return dm


def refused(tmp_path, frame, name="p.csv", **overrides) -> str:
    with pytest.raises(ForecastingError) as err:
        module(tmp_path, frame, name, **overrides)
    assert "\n" not in str(err.value)
    return str(err.value)


def assert_no_leak(dm):
    """Scaler rows end before val_start; each split's targets lie inside it (full timestamps compared)."""
    stats = dm.stats
    val, test = pd.Timestamp(stats["val_start"]), pd.Timestamp(stats["test_start"])
    ranges = {k: [pd.Timestamp(t) for t in v] for k, v in stats["ranges"].items()}
    assert ranges["scaler"][1] < val and ranges["train_targets"][1] < val
    assert val <= ranges["val_targets"][0] and ranges["val_targets"][1] < test <= ranges["test_targets"][0]


@pytest.mark.parametrize(
    "val_start, test_start",
    [(0.6, 0.8), ("2020-01-08", "2020-01-11"), ("2020-01-08 12:00", "2020-01-10T03:00")],
)
def test_hourly_data_splits_at_fractions_dates_and_datetimes(tmp_path, val_start, test_start):
    dm = module(tmp_path, hourly(), val_start=val_start, test_start=test_start)
    assert_no_leak(dm)
    if isinstance(val_start, str):
        assert pd.Timestamp(dm.stats["val_start"]) == pd.Timestamp(val_start)
    # Full ISO timestamps, not days: the 12:00 split keeps its hour.
    assert "T" in dm.stats["val_start"] and all("T" in t for v in dm.stats["ranges"].values() for t in v)
    rows = dm.frames["fit"]
    assert rows["time"][rows["time"] < pd.Timestamp(dm.stats["val_start"])].max() == pd.Timestamp(
        dm.stats["ranges"]["scaler"][1]
    )


def test_predict_rows_of_intraday_data_keep_the_hour(tmp_path):
    dm = module(tmp_path, hourly(60, ("AAA",)), window=8)
    dm.setup("predict")
    described = dm.describe_rows(dm.dataset("predict").ends)
    assert described["date"].is_unique and pd.Timestamp(described["date"].iloc[-1]).hour == (59 % 24)
    daily = module(tmp_path, make_prices(60, ("AAA",)), "d.csv", window=8)
    daily.setup("predict")
    assert str(daily.describe_rows(daily.dataset("predict").ends)["date"].iloc[0]).count(":") == 0  # a date


@pytest.mark.parametrize("name", ["p.csv", "p.parquet"])
def test_time_zone_aware_input_is_converted_to_data_timezone(tmp_path, name):
    frame = make_prices(120, ("AAA",))
    local = pd.to_datetime(frame["date"]).dt.tz_localize("America/New_York") + pd.Timedelta(hours=16)
    frame["date"] = local.astype(str) if name.endswith(".csv") else local
    dm = module(tmp_path, frame, name, window=8)
    assert dm.frames["fit"]["time"].iloc[0] == pd.Timestamp("2020-01-01 21:00")  # 16:00 EST = 21:00 UTC
    tokyo = module(tmp_path, frame, name, window=8, timezone="Asia/Tokyo")
    assert tokyo.frames["fit"]["time"].iloc[0] == pd.Timestamp("2020-01-02 06:00")


def test_mixed_offsets_and_a_tz_aware_split_point(tmp_path):
    frame = make_prices(120, ("AAA",))
    times = pd.to_datetime(frame["date"])
    frame["date"] = [
        str(t.tz_localize("Europe/Paris") if i % 2 else t.tz_localize("Asia/Kolkata")) for i, t in enumerate(times)
    ]
    dm = module(tmp_path, frame, window=8, val_start="2020-03-02T00:00+01:00", test_start=0.8)
    assert pd.Timestamp(dm.stats["val_start"]) == pd.Timestamp("2020-03-01 23:00")  # in UTC
    assert_no_leak(dm)
    frame.loc[5, "date"] = "2020-01-08"  # no offset among rows that have one
    assert "some rows carry a UTC offset and some do not" in refused(tmp_path, frame, "m.csv", window=8)


def test_integer_dates_are_refused_with_a_hint_or_read_with_a_format(tmp_path):
    frame = make_prices(120, ("AAA",))
    frame["date"] = pd.to_datetime(frame["date"]).dt.strftime("%Y%m%d").astype(int)
    for name in ("i.csv", "i.parquet"):
        message = refused(tmp_path, frame, name, window=8)
        assert "the times are numbers (20200101)" in message and 'data.date_format: "%Y%m%d"' in message
    dm = module(tmp_path, frame, window=8, date_format="%Y%m%d")
    assert dm.frames["fit"]["time"].iloc[0] == pd.Timestamp("2020-01-01")


@pytest.mark.parametrize("unit, scale", [("epoch_s", 1), ("epoch_ms", 1000)])
def test_epoch_dates(tmp_path, unit, scale):
    frame = make_prices(120, ("AAA",))
    frame["date"] = (pd.to_datetime(frame["date"]) - pd.Timestamp(0)).dt.total_seconds().astype(np.int64) * scale
    dm = module(tmp_path, frame, window=8, date_format=unit)
    assert dm.frames["fit"]["time"].iloc[1] == pd.Timestamp("2020-01-02")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"date_format": "%Q"}, "data.date_format '%Q'"),
        ({"time_column": None}, "data.time_column: required"),
        ({"timezone": "Mars/Olympus"}, "data.timezone: unknown time zone"),
        ({"val_start": "yesterday-ish"}, "data.val_start: cannot parse"),
    ],
)
def test_bad_time_settings_are_one_line(tmp_path, overrides, expected):
    assert expected in refused(tmp_path, make_prices(120, ("AAA",)), window=8, **overrides)


ZONES = [None, "UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    freq=st.sampled_from(["min", "15min", "h", "D", "B"]),
    zone=st.sampled_from(ZONES),
    n=st.integers(40, 120),
    tickers=st.integers(1, 3),
    split=st.sampled_from(["fraction", "datetime", "aware"]),
    seed=st.integers(0, 10**6),
)
def test_random_timestamps_never_leak_and_predict_rows_are_unique(tmp_path, freq, zone, n, tickers, split, seed):
    rng = np.random.default_rng(seed)
    frame = make_prices(n, tuple(f"T{k}" for k in range(tickers)), seed=seed % 1000)
    start = pd.Timestamp("2021-03-01") + pd.Timedelta(minutes=int(rng.integers(0, 10**5)))
    times = pd.date_range(start, periods=n, freq=freq, tz="UTC")
    stamps = times.tz_convert(zone).astype(str) if zone else times.tz_localize(None).astype(str)
    frame["date"] = np.tile(stamps, tickers)
    frame = frame.sample(frac=1, random_state=seed % 1000)  # unsorted input
    distinct = np.sort(times.tz_localize(None))
    if split == "fraction":
        bounds = {"val_start": 0.6, "test_start": 0.8}
    else:
        val, test = distinct[int(0.55 * n)], distinct[int(0.8 * n)]
        if split == "aware":
            val, test = (pd.Timestamp(t).tz_localize("UTC").tz_convert("Asia/Kolkata").isoformat() for t in (val, test))
        else:
            val, test = (pd.Timestamp(t).isoformat() for t in (val, test))
        bounds = {"val_start": val, "test_start": test}
    try:
        dm = module(tmp_path, frame, window=8, **bounds)
    except ForecastingError as err:
        assert "no windows" in str(err) or "fewer than" in str(err)  # a too-short split, said so
        return
    assert_no_leak(dm)
    rows = dm.frames["fit"]
    assert rows.groupby("ticker")["time"].is_monotonic_increasing.all()
    assert len(rows) == n * tickers  # every stamp read, none merged by the conversion to UTC
    dm.setup("predict")
    described = dm.describe_rows(dm.dataset("predict").ends)
    assert not described.duplicated(["date", "ticker"]).any()
    windows = dm.dataset("predict")
    assert torch.isfinite(windows.__getitems__(list(range(len(windows))))["x"]).all()


@pytest.mark.parametrize("zone", [None, "America/New_York"], ids=["naive", "zoned"])
def test_a_missing_time_in_a_parquet_file_is_named_as_missing(tmp_path, zone):
    frame = make_prices(80, ("AAA", "BBB"))
    frame["date"] = pd.to_datetime(frame["date"])
    if zone:
        frame["date"] = frame["date"].dt.tz_localize(zone)
    frame.loc[3, "date"] = pd.NaT  # a null cell, not a mix of offsets
    frame.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(ForecastingError, match=r"row 4, column 'date': the time is missing; fill in or remove the row"):
        PriceDataModule(**dm_kwargs(tmp_path / "p.parquet")).setup("fit")
