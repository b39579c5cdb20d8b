import numpy as np
import pandas as pd
import pytest
import torch

from forecasting.baselines import har_regressors, scores
from forecasting.cli import main
from forecasting.data.datamodule import PriceDataModule
from tests.conftest import dm_kwargs


def test_baselines_in_the_batch_are_computed_from_training_samples_only(prices_csv):
    dm = PriceDataModule(**dm_kwargs(prices_csv))
    dm.setup("fit")
    frame = dm.frames["fit"]
    series = frame["target"].to_numpy()  # the target in original units, float64
    val = dm.dataset("val")
    batch = val.__getitems__(list(range(len(val))))
    ends = batch["row"].numpy()
    np.testing.assert_allclose(batch["baselines"]["naive"][:, 0].numpy(), series[ends], rtol=1e-6)

    # HAR by hand: OLS of the next value on (1, x_t, mean of last 5, mean of last 22), training samples only
    train = dm.dataset("train").ends.numpy()
    x = np.column_stack([np.ones(len(train))] + [
        np.array([series[max(e - n + 1, 0) : e + 1].mean() for e in train]) for n in (1, 5, 22)
    ])  # fmt: skip
    ok = frame.groupby("ticker").cumcount().to_numpy()[train] >= 21  # 22 days of history in the ticker
    beta = np.linalg.lstsq(x[ok], series[train[ok] + 1], rcond=None)[0]
    np.testing.assert_allclose(np.asarray(dm.stats["baselines"]["har_beta"])[:, 0], beta, rtol=1e-6)
    assert 0.5 < beta[1:].sum() < 1.1  # GARCH variance is persistent: weights sum near one
    # the mean of every training target: each day before val_start except a ticker's first
    targets = frame[(frame.time < pd.Timestamp(dm.stats["val_start"])) & (frame.groupby("ticker").cumcount() > 0)]
    np.testing.assert_allclose(dm.stats["baselines"]["target_mean"][0], targets["target"].mean(), rtol=1e-9)


def test_har_regressors_do_not_cross_tickers():
    series = np.arange(30.0)
    ticker = np.array(["a"] * 25 + ["b"] * 5)
    x = har_regressors(series, ticker)
    assert x[24, 3] == pytest.approx(np.mean(np.arange(3, 25)))
    assert np.isnan(x[27, 2]) and x[29, 2] == pytest.approx(np.mean(np.arange(25, 30)))


def test_scores_skill_and_direction():
    actual = np.array([[1.0], [-1.0], [1.0], [1.0]])
    table = scores({"model": actual * 0.5, "mean": np.zeros_like(actual)}, actual, direction=True)
    assert table.loc["model", "skill_vs_mean"] == pytest.approx(0.75)
    assert table.loc["model", "hit_rate"] == 1.0 and table.loc["mean", "up_share"] == 0.75


@pytest.mark.parametrize(
    "config, expected",
    [
        ("configs/volatility.yaml", {"val/skill_vs_har", "val/qlike", "val/baseline_qlike_har"}),
        ("configs/returns.yaml", {"val/hit_rate", "val/up_share", "val/skill_vs_mean"}),
    ],
)
def test_validation_and_test_log_baselines_next_to_the_model(cli_args, tmp_path, config, expected):
    cli = main(cli_args("fit", config))
    logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert expected <= set(logged)
    for base in ("naive", "mean"):
        skill = 1 - logged["val/mse_orig"] / logged[f"val/baseline_mse_{base}"]
        assert logged[f"val/skill_vs_{base}"] == pytest.approx(skill, rel=1e-5)
    # the logged model MSE is the square of the logged RMSE on the same windows
    assert logged["val/mse_orig"] == pytest.approx(logged["val/rmse_orig"] ** 2, rel=1e-4)
    last = next((tmp_path / "logs").rglob("last.ckpt"))
    test = main(cli_args("test", config, "--ckpt_path", str(last)))
    assert "test/skill_vs_naive" in test.trainer.callback_metrics
    assert torch.isfinite(test.trainer.callback_metrics["test/skill_vs_naive"])
