"""A distribution head end to end through the CLI: fit, test on the checkpoint, predict's CSV,
the PIT figure and the forecast figure's bands; GARCH in the log-variance skill table."""

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from forecasting.callbacks.forecast_plot import ForecastPlot
from forecasting.cli import main

RETURNS = ("--data.init_args.target", "log_return", "--trainer.limit_val_batches", "1.0",
           "--trainer.limit_test_batches", "1.0", "--trainer.limit_predict_batches", "1.0")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("head", ["quantiles", "student_t"])
def test_distribution_head_fit_test_predict(cli_args, tmp_path, capsys, head):
    extra = ("--model.head", head, *RETURNS)
    cli = main(cli_args("fit", "configs/returns.yaml", *extra))
    run = tmp_path / "logs" / "returns" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    assert set(torch.load(last, weights_only=True)["conformal"]) == {"50", "90"}  # plain lists, from validation
    images = EventAccumulator(str(run), size_guidance={"images": 0}).Reload().Tags()["images"]
    assert "calibration/val" in images and "forecast/val" in images
    plot = next(c for c in cli.trainer.callbacks if isinstance(c, ForecastPlot))
    lo, hi = plot.drawn["bands"][0.9]
    assert (lo <= plot.drawn["forecast"]).all() and (plot.drawn["forecast"] <= hi).all()

    cli = main(cli_args("test", "configs/returns.yaml", "--ckpt_path", str(last), *extra))
    m = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for name in ("coverage_50", "coverage_90", "breach_01", "breach_05", "conformal_coverage_90"):
        assert 0 <= m[f"test/{name}"] <= 1
    assert 0 <= m["test/kupiec_p_05"] <= 1 and m["test/kupiec_lr_05"] >= 0 and m["test/crps"] > 0
    assert m["test/baseline_crps_empirical"] > 0 and m["test/baseline_crps_ewma"] > 0
    assert m["test/baseline_nll_garch"] < 0  # a density of ~1% daily returns: log-density well above 0
    assert ("test/nll" in m) == (head == "student_t")  # the quantile head has no density

    out = tmp_path / "forecasts.csv"
    main(cli_args("predict", "configs/returns.yaml", "--ckpt_path", str(last), *extra,
                  "--prediction_writer.output", str(out)))  # fmt: skip
    table = pd.read_csv(out)
    params = ["q01", "q05", "q25", "q50", "q75", "q95", "q99"] if head == "quantiles" else ["loc", "scale", "df"]
    conformal = [f"conformal_{s}_{a}" for a in ("50", "90") for s in ("lo", "hi")]
    assert list(table.columns) == ["date", "ticker", "h", "target", "forecast", *params, *conformal, "actual"]
    if head == "quantiles":
        assert (table[params].diff(axis=1).iloc[:, 1:] >= 0).all().all()  # original units: still ordered
        assert (table["forecast"] == table["q50"]).all()
    assert (table["conformal_lo_90"] <= table["conformal_lo_50"]).all()
    assert (table["conformal_hi_50"] <= table["conformal_hi_90"]).all()

    # a checkpoint's head is not silently swapped for the config's: one line, before anything runs
    other = "gaussian" if head != "gaussian" else "quantiles"
    with pytest.raises(SystemExit) as exit_:
        main(cli_args("test", "configs/returns.yaml", "--ckpt_path", str(last), *RETURNS, "--model.head", other))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and f"model.head='{head}'" in err[0], err


def test_garch_joins_the_log_variance_skill_table(cli_args, tmp_path):
    cli = main(cli_args("fit", "configs/volatility.yaml", "--trainer.limit_val_batches", "1.0"))
    m = cli.trainer.callback_metrics
    assert {"val/baseline_mse_garch", "val/baseline_qlike_garch", "val/skill_vs_garch"} <= set(m)
    # GARCH's log variance, shifted by its training gap, is in the right range: far better than a
    # constant, and not absurdly better than HAR on this GARCH-generated file
    assert float(m["val/baseline_mse_garch"]) < float(m["val/baseline_mse_mean"])
