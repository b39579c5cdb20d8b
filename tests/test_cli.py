import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from forecasting.cli import main


def test_fit_writes_logs_config_checkpoint_and_predict_writes_forecasts(cli_args, tmp_path, prices):
    main(cli_args("fit"))
    run = tmp_path / "logs" / "volatility" / "version_0"
    assert (run / "config.yaml").is_file()
    events = EventAccumulator(str(run)).Reload()
    assert {"train/loss_step", "val/loss", "val/mae_orig", "val/rmse"} <= set(events.Tags()["scalars"])
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)  # no pickled objects: plain state only
    assert ckpt["PriceDataModule"]["features"] == ["log_return", "gk_log_var", "log_volume_change"]

    out = tmp_path / "forecasts.csv"
    main(cli_args(
        "predict", "configs/volatility.yaml", "--ckpt_path", str(last),
        "--prediction_writer.output", str(out), "--trainer.limit_predict_batches", "1.0",
    ))  # fmt: skip
    forecasts = pd.read_csv(out)
    assert list(forecasts.columns) == ["date", "ticker", "h", "target", "forecast", "actual"]
    known = forecasts.dropna()
    # original units: log daily variance of a ~1% daily volatility is about -9, not ~0 as when scaled
    assert known.actual.between(-16, -4).all() and known.forecast.between(-16, -4).all()
    assert set(forecasts.ticker) == {"AAA", "BBB"}


def test_validate_and_test_subcommands_log_metrics(cli_args, tmp_path):
    main(cli_args("fit"))
    last = tmp_path / "logs" / "volatility" / "version_0" / "checkpoints" / "last.ckpt"
    cli = main(cli_args("test", "configs/volatility.yaml", "--ckpt_path", str(last)))
    metrics = cli.trainer.callback_metrics
    assert {"test/loss", "test/mae", "test/rmse", "test/mae_orig", "test/rmse_orig"} <= set(metrics)
    assert 0 < float(metrics["test/rmse"]) < 5


def test_predict_on_a_new_file_uses_the_training_scaler(cli_args, tmp_path, prices):
    main(cli_args("fit"))
    last = tmp_path / "logs" / "volatility" / "version_0" / "checkpoints" / "last.ckpt"
    new = tmp_path / "new.csv"
    prices[prices.ticker == "BBB"].tail(40).to_csv(new, index=False)
    out = tmp_path / "new_forecasts.csv"
    main(cli_args(
        "predict", "configs/volatility.yaml", "--ckpt_path", str(last),
        "--data.init_args.predict_path", str(new), "--prediction_writer.output", str(out),
    ))  # fmt: skip
    forecasts = pd.read_csv(out)
    assert len(forecasts) == 40 - 16 + 1 - 1  # one per window; the first row has no log return
    assert forecasts.actual.isna().sum() == 1  # the latest forecast has no actual yet


def test_fit_ckpt_path_last_resumes_the_newest_run_in_its_own_folder(cli_args, tmp_path):
    main(cli_args("fit"))
    cli = main(cli_args("fit", "configs/volatility.yaml", "--ckpt_path", "last", "--trainer.max_epochs", "2"))
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 2 * 5  # 5 batches per debug epoch
    assert [p.name for p in (tmp_path / "logs" / "volatility").iterdir()] == ["version_0"]


@pytest.mark.parametrize("tbptt", [None, "8"])
def test_lr_find_prints_a_suggestion_and_saves_the_plot(cli_args, tmp_path, capsys, tbptt):
    extra = ["--num_training", "30", "--trainer.limit_train_batches", "1.0", "--trainer.max_epochs", "10"]
    if tbptt:
        extra += ["--model.tbptt_steps", tbptt]
    cli = main(cli_args("lr_find", "configs/volatility.yaml", *extra))
    out = capsys.readouterr().out
    assert "lr_find: suggested learning rate" in out and "model.optimizer.init_args.lr:" in out
    lr = float(out.split("suggested learning rate ")[1].split(":")[0])
    assert 1e-6 <= lr <= 1.0
    assert next((tmp_path / "logs").rglob("lr_find.png")).stat().st_size > 1000
    assert ("running with full BPTT" in out) == (tbptt is not None)
    assert cli.model.automatic_optimization == (tbptt is None)  # the config's mode is restored


def test_deterministic_fit_repeats_exactly_without_filling_memory(cli_args, tmp_path):
    """`deterministic: true` keeps deterministic kernels (two fits give identical weights) but not
    torch's NaN-filling of new tensors, which made every CPU LSTM step ~20% slower (trainer.py)."""
    for _ in range(2):
        main(cli_args("fit", "configs/volatility.yaml", "--trainer.max_epochs", "2"))
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    runs = [tmp_path / "logs" / "volatility" / f"version_{i}" / "checkpoints" / "last.ckpt" for i in (0, 1)]
    first, second = (torch.load(r, weights_only=True)["state_dict"] for r in runs)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    trained = torch.load(runs[0], weights_only=True)
    assert trained["epoch"] == 1  # last.ckpt is the last epoch's state
