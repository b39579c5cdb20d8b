"""Every bad input a user can cause: one ForecastingError line naming file, column, row or key."""

import numpy as np
import pandas as pd
import pytest

from forecasting.cli import main
from forecasting.data.datamodule import PriceDataModule
from forecasting.data.io import read_prices
from forecasting.errors import ForecastingError
from tests.conftest import dm_kwargs


def setup_error(path, **overrides) -> str:
    with pytest.raises(ForecastingError) as err:
        PriceDataModule(**dm_kwargs(path, **overrides)).setup("fit")
    message = str(err.value)
    assert "\n" not in message
    return message


def write(tmp_path, frame: pd.DataFrame, name="bad.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_missing_file(tmp_path):
    assert "file not found" in setup_error(tmp_path / "nope.csv")


def test_empty_file_and_header_only(tmp_path, prices):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "empty.csv: file is empty" in setup_error(empty)
    header = tmp_path / "header.csv"
    header.write_text(",".join(prices.columns) + "\n")
    assert "header.csv: has a header but no rows" in setup_error(header)


def test_binary_file(tmp_path):
    path = tmp_path / "binary.csv"
    path.write_bytes(bytes(range(256)) * 10)
    assert "cannot be read as csv" in setup_error(path)


def test_unknown_column_suggests_the_nearest(tmp_path, prices):
    path = write(tmp_path, prices.rename(columns={"close": "Close_"}))
    message = setup_error(path)
    assert "no column 'close' (config key data.columns.close)" in message and "did you mean 'Close_'" in message


def test_unparseable_date_names_line(tmp_path, prices):
    prices.loc[7, "date"] = "not a date"
    message = setup_error(write(tmp_path, prices))
    assert "line 9, column 'date'" in message and "'not a date'" in message


def test_mixed_date_formats(tmp_path, prices):
    prices.loc[3, "date"] = "01/09/2020"
    assert "line 5, column 'date'" in setup_error(write(tmp_path, prices))


def test_duplicate_date_within_ticker(tmp_path, prices):
    prices.loc[10, "date"] = prices.loc[9, "date"]
    message = setup_error(write(tmp_path, prices))
    assert "duplicate date" in message and "ticker 'AAA'" in message and "line 12" in message


def test_non_numeric_and_non_finite_cells(tmp_path, prices):
    prices["volume"] = prices["volume"].astype(object)
    prices.loc[20, "volume"] = "12O0"  # a letter O: garbage is always an error
    assert "line 22, column 'volume': '12O0' is not a number" in setup_error(write(tmp_path, prices))
    prices.loc[20, "volume"] = "n/a"
    message = setup_error(write(tmp_path, prices))
    assert "line 22, column 'volume': value 'n/a' is missing" in message and "data.missing: ffill" in message
    prices.loc[20, "volume"] = 1e6
    prices.loc[30, "high"] = np.inf
    assert "line 32, column 'high'" in setup_error(write(tmp_path, prices, "inf.csv"))


@pytest.mark.parametrize("policy", ["ffill", "drop"])
def test_missing_policy_fills_or_drops(tmp_path, prices, policy):
    prices = prices.astype({"close": object})
    prices.loc[[0, 20], "close"] = ["", "NaN"]  # a ticker's first row, and one in the middle
    dm = PriceDataModule(**dm_kwargs(write(tmp_path, prices), missing=policy))
    dm.setup("fit")
    frame = dm.frames["fit"]
    assert len(frame) == 600 - (1 if policy == "ffill" else 2)  # nothing to carry into the first row
    rows = read_prices(dm.path, "date", "ticker", dm.columns, missing=policy)  # the frame keeps features only
    aaa = rows[rows.ticker == "AAA"].set_index("line")
    if policy == "ffill":
        assert aaa.loc[20, "close"] == float(prices.loc[19, "close"])
    else:
        assert 20 not in aaa.index
    assert np.isfinite(frame["f:gk_log_var"]).all()
    assert frame["f:log_return"].isna().sum() == 2  # only each ticker's first row, as always


def test_wrong_encoding(tmp_path, prices):
    path = tmp_path / "latin1.csv"
    path.write_bytes(prices.head(50).to_csv(index=False).replace("AAA", "ÄÄÄ").encode("latin-1"))
    assert "cannot be read as csv" in setup_error(path)


def test_non_positive_price(tmp_path, prices):
    prices.loc[40, "low"] = 0.0
    assert "line 42, column 'low': price 0.0 is not positive" in setup_error(write(tmp_path, prices))


def test_zero_volume_is_a_bad_value(tmp_path, prices):
    prices.loc[50, "volume"] = 0
    message = setup_error(write(tmp_path, prices))
    assert "line 52, column 'volume': volume 0.0 is not positive" in message and "data.bad_values: missing" in message


def test_constant_feature_column(tmp_path, prices):
    prices["flat"] = 1.0
    path = write(tmp_path, prices)
    columns = {c: c for c in ("open", "high", "low", "close", "volume", "flat")}
    message = setup_error(path, features=["log_return", "flat"], columns=columns)
    assert "'flat' is constant on the training rows" in message


def test_short_ticker_is_skipped_with_a_warning_and_none_left_is_an_error(tmp_path, prices):
    short = pd.concat([prices[prices.ticker == "AAA"], prices[prices.ticker == "BBB"].head(10)])
    path = write(tmp_path, short)
    with pytest.warns(UserWarning, match="ticker 'BBB' has 10 rows"):
        PriceDataModule(**dm_kwargs(path)).setup("fit")
    assert "no ticker has data.window + data.horizon" in setup_error(path, window=400)


def test_empty_split(tmp_path, prices_csv):
    module = PriceDataModule(**dm_kwargs(prices_csv, val_start="2020-01-10", test_start="2020-01-20"))
    with pytest.raises(ForecastingError, match="the train split has no windows"):
        module.setup("fit")
        module.train_dataloader()


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"window": 0}, "data.window"),
        ({"horizon": -1}, "data.horizon"),
        ({"scaler": "zscore"}, "data.scaler"),
        ({"target": "log_retrun"}, "unknown transform 'log_retrun'"),
        ({"val_start": 0.9, "test_start": 0.5}, "data.val_start"),
    ],
)
def test_absurd_config_values_fail_before_reading(tmp_path, overrides, key):
    with pytest.raises(ForecastingError, match=key):
        PriceDataModule(**dm_kwargs(tmp_path / "never_read.csv", **overrides))


@pytest.mark.parametrize(
    "fault, expected",
    [
        ("date", "line 9, column 'date'"),
        ("split", "the val split has no windows"),
    ],
)
def test_cli_prints_one_line_exits_2_and_writes_nothing(cli_args, tmp_path, capsys, prices, fault, expected):
    extra = ["--data.init_args.val_start", "2029-01-01", "--data.init_args.test_start", "2030-01-01"]
    if fault == "date":
        prices.loc[7, "date"] = "2020-13-45"
        extra = []
    bad = write(tmp_path, prices)
    with pytest.raises(SystemExit) as exit_:
        main(cli_args("fit", "configs/volatility.yaml", "--data.init_args.path", str(bad), *extra))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and expected in err[-1]
    assert "Traceback" not in "\n".join(err)
    logs = tmp_path / "logs"
    assert not logs.exists() or not any(p.is_file() for p in logs.rglob("*"))


@pytest.mark.parametrize(
    "key, value", [("--model.net.init_args.dropout", "1.5"), ("--data.init_args.window", "0"), ("--data.init_args.scaler", "z")]
)
def test_cli_bad_config_value_is_one_line(cli_args, capsys, key, value):
    with pytest.raises(SystemExit) as exit_:
        main(cli_args("fit", "configs/volatility.yaml", key, value))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and key.split(".")[-1] in err[0]
