"""Tiny synthetic price files and a shrunk trainer, all under tmp_path."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_prices(n_days: int = 300, tickers=("AAA", "BBB"), seed: int = 0) -> pd.DataFrame:
    """Long-format daily OHLCV with GARCH(1,1) volatility (so volatility is forecastable)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=n_days)
    frames = []
    for k, ticker in enumerate(tickers):
        var = np.empty(n_days)
        ret = np.empty(n_days)
        var[0] = 1e-4
        for t in range(n_days):
            if t:
                var[t] = 2e-6 + 0.1 * ret[t - 1] ** 2 + 0.88 * var[t - 1]
            ret[t] = np.sqrt(var[t]) * rng.standard_normal()
        close = (50.0 + 30 * k) * np.exp(np.cumsum(ret))
        open_ = np.r_[close[0], close[:-1]] * np.exp(0.2 * np.sqrt(var) * rng.standard_normal(n_days))
        spread = np.sqrt(var) * np.abs(rng.standard_normal((2, n_days)))
        frames.append(
            pd.DataFrame(
                {
                    "date": dates.strftime("%Y-%m-%d"),
                    "ticker": ticker,
                    "open": open_,
                    "high": np.maximum(open_, close) * np.exp(spread[0]),
                    "low": np.minimum(open_, close) * np.exp(-spread[1]),
                    "close": close,
                    "volume": np.round(1e6 * np.exp(0.3 * rng.standard_normal(n_days) + 50 * np.sqrt(var))),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def prices() -> pd.DataFrame:
    return make_prices()


@pytest.fixture
def prices_csv(tmp_path, prices) -> Path:
    path = tmp_path / "prices.csv"
    prices.to_csv(path, index=False)
    return path


def dm_kwargs(path, **overrides) -> dict:
    """Small data-module settings for the synthetic file."""
    kwargs = dict(path=str(path), window=16, val_start=0.6, test_start=0.8, batch_size=32)
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def cli_args(tmp_path, prices_csv, monkeypatch):
    """Arguments for a one-epoch CLI run on the tiny file, writing only under tmp_path."""
    monkeypatch.setattr("sys.argv", ["forecasting"])  # LightningCLI warns if pytest's own args are there

    def args(subcommand: str = "fit", config: str = "configs/volatility.yaml", *extra: str, overlays=()) -> list[str]:
        return [
            subcommand,
            "--config", str(ROOT / config),
            *(arg for overlay in overlays for arg in ("--config", str(ROOT / overlay))),
            "--config", str(ROOT / "configs/debug.yaml"),
            "--data.init_args.path", str(prices_csv),
            "--data.init_args.adjust_column", "null",
            "--data.init_args.window", "16",
            "--data.init_args.val_start", "0.6",
            "--data.init_args.test_start", "0.8",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
            "--trainer.enable_progress_bar", "false",
            *extra,
        ]  # fmt: skip

    return args
