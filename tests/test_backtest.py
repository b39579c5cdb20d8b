"""Walk-forward backtest (forecasting/backtest.py) and the Diebold-Mariano test (forecasting/stats.py)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from conftest import ROOT
from scipy import stats as st

from forecasting import backtest, stats
from forecasting.cli import main
from forecasting.errors import ForecastingError


# ------------------------------------------------------------------ Diebold-Mariano
def test_dm_matches_a_hand_computation():
    d = np.array([0.5, -1.0, 2.0, 1.5, 0.0])
    # mean 0.6; deviations -0.1 -1.6 1.4 0.9 -0.6; gamma_0 = 5.7/5 = 1.14;
    # gamma_1 = (0.16 - 2.24 + 1.26 - 0.54)/5 = -0.272; Bartlett lag 1: 1.14 + 2 * 0.5 * -0.272 = 0.868
    assert stats.long_run_variance(d, 0) == pytest.approx(1.14)
    assert stats.long_run_variance(d, 1) == pytest.approx(0.868)
    out = stats.diebold_mariano(d, horizon=2)  # default lags: max(h-1, floor(4 (5/100)^(2/9))) = max(1, 2) = 2
    assert out["lags"] == 2
    out = stats.diebold_mariano(d, horizon=2, lags=1)
    dm = 0.6 / math.sqrt(0.868 / 5)
    assert out["dm"] == pytest.approx(dm)  # 1.4401
    hln = dm * math.sqrt((5 + 1 - 4 + 2 / 5) / 5)  # HLN: sqrt(0.48)
    assert out["hln"] == pytest.approx(hln)  # 0.99770
    assert out["p_two_sided"] == pytest.approx(2 * st.t(4).sf(hln))
    assert out["p_less"] == pytest.approx(st.t(4).cdf(hln))  # the model is worse here: p_less > 0.5
    assert out["p_less"] > 0.5


def test_newey_west_variance_matches_statsmodels_hac():
    rng = np.random.default_rng(0)
    e = rng.standard_normal(301)
    d = 0.1 + e[1:] + 0.6 * e[:-1]  # MA(1): autocorrelated like overlapping forecast errors
    for lags in (0, 1, 5):
        fit = sm.OLS(d, np.ones(len(d))).fit(cov_type="HAC", cov_kwds={"maxlags": lags, "use_correction": False})
        assert stats.long_run_variance(d, lags) / len(d) == pytest.approx(fit.bse[0] ** 2, rel=1e-10)


def test_qlike_is_zero_for_a_perfect_forecast_and_positive_otherwise():
    a = np.array([-9.0, -8.0])
    assert stats.qlike(a, a) == pytest.approx([0, 0])
    assert (stats.qlike(a + 0.5, a) > 0).all() and (stats.qlike(a - 0.5, a) > 0).all()


# ------------------------------------------------------------------ fold plan
def test_plan_tiles_the_last_periods_without_overlap():
    dates = pd.bdate_range("2010-01-01", "2014-12-31")
    folds = backtest.plan(dates, 3, "1y")
    assert [f.test_start for f in folds] == ["2012-01-01", "2013-01-01", "2014-01-01"]
    assert [f.test_end for f in folds] == ["2013-01-01", "2014-01-01", "2015-01-01"]
    assert [f.val_start for f in folds] == ["2011-01-01", "2012-01-01", "2013-01-01"]
    assert all(f.train_start is None for f in folds)  # expanding
    sliding = backtest.plan(dates, 2, "6m", val_period="3m", scheme="sliding", train_period="1y")
    assert [(f.train_start, f.val_start, f.test_start, f.test_end) for f in sliding] == [
        ("2012-10-01", "2013-10-01", "2014-01-01", "2014-07-01"),
        ("2013-04-01", "2014-04-01", "2014-07-01", "2015-01-01"),
    ]
    assert sliding[1].test_start == sliding[0].test_end  # tiles
    started = backtest.plan(dates, None, "1y", start="2013-01-01")
    assert [f.test_start for f in started] == ["2013-01-01", "2014-01-01"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(folds=3, test_period="1q"), "--test_period: cannot read"),
        (dict(folds=5, test_period="1y"), "no training days"),
        (dict(folds=2, test_period="1y", scheme="sliding"), "needs --train_period"),
        (dict(folds=2, test_period="1y", start="2016-01-01"), "no day of the data"),
        (dict(folds=None, test_period="1y", start="2016-01-01"), "--start 2016-01-01: no day of the data"),
        (dict(folds=None, test_period="1y", start="the spring"), "--start: cannot read the date"),
    ],
)
def test_plan_refuses_in_one_line(kwargs, message):
    with pytest.raises(ForecastingError, match=message):
        backtest.plan(pd.bdate_range("2010-01-01", "2014-12-31"), **kwargs)


# ------------------------------------------------------------------ backtests on synthetic series
def log_ar1_prices(n_days: int = 700, tickers=("AAA", "BBB"), phi: float = 0.97, seed: int = 0) -> pd.DataFrame:
    """OHLCV whose daily log variance is an AR(1): tomorrow's volatility is forecastable from today's."""
    rng = np.random.default_rng(seed)
    frames = []
    for k, ticker in enumerate(tickers):
        log_var = np.empty(n_days)
        log_var[0] = -9.0
        for t in range(1, n_days):
            log_var[t] = -9.0 + phi * (log_var[t - 1] + 9.0) + 0.35 * rng.standard_normal()
        sd = np.exp(log_var / 2)
        close = (50.0 + 30 * k) * np.exp(np.cumsum(sd * rng.standard_normal(n_days)))
        open_ = np.r_[close[0], close[:-1]] * np.exp(0.2 * sd * rng.standard_normal(n_days))
        spread = sd * np.abs(rng.standard_normal((2, n_days)))
        frames.append(pd.DataFrame({
            "date": pd.bdate_range("2020-01-01", periods=n_days).strftime("%Y-%m-%d"), "ticker": ticker,
            "open": open_, "high": np.maximum(open_, close) * np.exp(spread[0]),
            "low": np.minimum(open_, close) * np.exp(-spread[1]), "close": close,
            "volume": np.round(1e6 * np.exp(0.3 * rng.standard_normal(n_days))),
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def random_walk_prices(n_days: int = 300, tickers=("AAA", "BBB"), seed: int = 0) -> pd.DataFrame:
    """A column `level` that is a Gaussian random walk: "same as yesterday" is the best forecast there is."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=n_days).strftime("%Y-%m-%d")
    return pd.concat(
        [pd.DataFrame({"date": dates, "ticker": t, "level": np.cumsum(rng.standard_normal(n_days))}) for t in tickers],
        ignore_index=True,
    )


def run_backtest(tmp_path, csv, *extra, out="bt", epochs=3, folds="2", period="4m", data=()):
    """A small backtest of configs/volatility.yaml through the CLI entry point; returns the output folder."""
    args = [
        "backtest", "--config", str(ROOT / "configs/volatility.yaml"), "--config", str(ROOT / "configs/fast.yaml"),
        "--data.init_args.path", str(csv), "--data.init_args.adjust_column", "null",
        "--data.init_args.window", "16", "--data.init_args.batch_size", "32", *data,
        "--model.net.init_args.hidden_sizes", "8", "--model.net.init_args.num_layers", "1",
        "--model.optimizer.init_args.lr", "0.01",
        "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--folds", folds, "--test_period", period, "--out", str(tmp_path / out), *extra,
    ]  # fmt: skip
    main(args)
    return tmp_path / out


def dm_row(out, base, loss="mse"):
    dm = pd.read_csv(out / "dm.csv")
    return dm[(dm["baseline"] == base) & (dm["loss"] == loss) & (dm["ticker"] == "all")].iloc[0]


@pytest.mark.slow
def test_ar1_log_variance_model_beats_the_mean_with_fresh_leak_free_folds(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["forecasting"])
    csv = tmp_path / "ar1.csv"
    log_ar1_prices(n_days=450).to_csv(csv, index=False)
    out = run_backtest(tmp_path, csv, epochs=2, period="3m")
    printed = capsys.readouterr().out
    assert "fold 0/2 cutoff" in printed and "fold 1/2 cutoff" in printed and "Diebold-Mariano" in printed
    row = dm_row(out, "mean")
    assert row["mean_d"] < 0 and row["p_less"] < 0.01, row  # the learned model beats the training mean
    records = [json.loads((out / f"fold_{i}.json").read_text()) for i in range(2)]
    # Fresh weights: fold 1 starts where fold 0 started, not where fold 0 ended.
    assert records[0]["initial_weights"] == records[1]["initial_weights"]
    assert records[0]["trained_weights"] != records[1]["initial_weights"]
    forecasts = pd.read_csv(out / "forecasts.csv")
    for r in records:  # each fold's scaler and baselines ended before its validation (so its test) start
        assert r["ranges"]["scaler"][1] < r["val_start"] < r["test_start"]
        assert r["ranges"]["baselines"][1] < r["val_start"]
        days = forecasts.loc[forecasts["fold"] == r["fold"], "date"]
        assert days.min() >= r["test_start"] and days.max() < r["test_end"]  # test periods tile, no overlap
    assert records[0]["ranges"]["scaler"][1] < records[1]["ranges"]["scaler"][1]  # refitted on more rows
    assert len(forecasts) == sum(r["windows"] for r in records)
    assert {"date", "origin", "ticker", "h", "fold", "model", "naive", "mean", "har", "actual"} <= set(forecasts)
    for name in ("pooled.csv", "folds.csv", "cumulative_loss.png", "summary.txt"):
        assert (out / name).stat().st_size > 0
    assert list((out / "summary").glob("events.out.tfevents.*"))  # summary text + figure in TensorBoard
    assert (out / "fold_0" / "config.yaml").is_file()  # one TensorBoard run per fold


@pytest.mark.slow
def test_random_walk_no_significant_skill_against_naive(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["forecasting"])
    data = ["--data.init_args.columns", "{level: level}", "--data.init_args.features", "[level]",
            "--data.init_args.target", "level"]  # fmt: skip
    for seed in range(3):
        csv = tmp_path / f"rw{seed}.csv"
        random_walk_prices(seed=seed).to_csv(csv, index=False)
        out = run_backtest(tmp_path, csv, "--seed_everything", str(seed), out=f"rw{seed}", data=data,
                           epochs=1, folds="1", period="3m")  # fmt: skip
        row = dm_row(out, "naive")
        assert row["p_less"] > 0.05, (seed, row)


@pytest.mark.slow
def test_resumed_and_fold_by_fold_backtests_equal_the_uninterrupted_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["forecasting"])
    csv = tmp_path / "ar1.csv"
    log_ar1_prices(n_days=300).to_csv(csv, index=False)
    whole = pd.read_csv(run_backtest(tmp_path, csv, out="whole", epochs=1, period="2m") / "forecasts.csv")

    # Killed during fold 1 (after its log folder was started): the rerun skips fold 0 and redoes fold 1.
    from forecasting.trainer import ForecastingTrainer

    fit, calls = ForecastingTrainer.fit, []

    def killed_on_second_fit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            (tmp_path / "killed" / "fold_1").mkdir(parents=True)
            (tmp_path / "killed" / "fold_1" / "partial").write_text("half a run")
            raise KeyboardInterrupt
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(ForecastingTrainer, "fit", killed_on_second_fit)
    with pytest.raises(KeyboardInterrupt):
        run_backtest(tmp_path, csv, out="killed", epochs=1, period="2m")
    assert (tmp_path / "killed" / "fold_0.json").is_file() and not (tmp_path / "killed" / "fold_1.json").exists()
    monkeypatch.setattr(ForecastingTrainer, "fit", fit)
    capsys.readouterr()
    resumed = pd.read_csv(run_backtest(tmp_path, csv, out="killed", epochs=1, period="2m") / "forecasts.csv")
    assert "fold 0/2: finished earlier" in capsys.readouterr().out
    assert not (tmp_path / "killed" / "fold_1" / "partial").exists()
    pd.testing.assert_frame_equal(resumed, whole)

    # A job array: folds in any order, then --merge.
    for i in ("1", "0"):
        run_backtest(tmp_path, csv, "--fold", i, out="array", epochs=1, period="2m")
    assert not (tmp_path / "array" / "forecasts.csv").exists()
    merged = pd.read_csv(run_backtest(tmp_path, csv, "--merge", out="array", epochs=1, period="2m") / "forecasts.csv")
    pd.testing.assert_frame_equal(merged, whole)
    assert (tmp_path / "array" / "dm.csv").read_text() == (tmp_path / "whole" / "dm.csv").read_text()

    # Refusals, in one line each: a fold missing, a fold whose scaler saw a test day, other arguments.
    (tmp_path / "array" / "fold_0.json").rename(tmp_path / "fold_0.json")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_backtest(tmp_path, csv, "--merge", out="array", epochs=1, period="2m")
    assert exit_.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: ") and "folds [0] are not finished; run them (--fold i)" in last, last
    (tmp_path / "fold_0.json").rename(tmp_path / "array" / "fold_0.json")
    record = json.loads((tmp_path / "array" / "fold_1.json").read_text())
    record["ranges"]["scaler"][1] = record["test_start"]  # as if the scaler had seen a test day
    (tmp_path / "array" / "fold_1.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit):
        run_backtest(tmp_path, csv, "--merge", out="array", epochs=1, period="2m")
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: leakage, refusing to report: fold 1: its scaler saw days up to"), last
    with pytest.raises(SystemExit):
        run_backtest(tmp_path, csv, "--merge", out="array", epochs=2, period="2m")
    assert "made by a backtest with other arguments" in capsys.readouterr().err.splitlines()[-1]
