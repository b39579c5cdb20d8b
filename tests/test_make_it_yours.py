"""The template copied the way a user does: a network and a data module defined OUTSIDE
forecasting/ (tests/nets.py, tests/user_data.py), chosen by class_path in YAML, through
fit, test, predict, diagnose and lr_find."""

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from forecasting.cli import main
from tests.conftest import ROOT

NETS = {
    "seed_lstm": "tests.nets.SeedLSTM",  # two LSTM layers in a ModuleList, state a list of lists
    "transformer": "tests.nets.TinyTransformer",  # no state, returns only its outputs
    "tcn": "forecasting.models.tcn.TCN",
}


def run(subcommand, cli_args, *extra, net=None, overlays=()):
    net_args = ["--model.net", f'{{"class_path": "{NETS[net]}"}}'] if net else []
    return main(cli_args(subcommand, "configs/volatility.yaml", *net_args, *extra, overlays=overlays))


@pytest.mark.slow
@pytest.mark.parametrize("net", NETS)
def test_own_network_runs_every_subcommand(net, cli_args, tmp_path, capsys):
    run("fit", cli_args, net=net)
    out = capsys.readouterr().out
    assert "fit: best checkpoint" in out and "skill vs naive" in out and "tensorboard --logdir" in out
    runs = tmp_path / "logs" / "volatility"
    (version,) = runs.iterdir()
    last = version / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["hyper_parameters"]["net"]["class_path"] == NETS[net]
    scalars = set(EventAccumulator(str(version)).Reload().Tags()["scalars"])
    gates = {t for t in scalars if t.startswith("gates/")}
    if net == "seed_lstm":  # each LSTM of the ModuleList under its own path
        assert {"gates/layers.0_forget_saturated", "gates/layers.1_forget_saturated"} <= gates
    else:
        assert gates == set()

    run("test", cli_args, "--ckpt_path", str(last), net=net)
    assert "test: test/loss" in capsys.readouterr().out
    out_csv = tmp_path / "p.csv"
    run("predict", cli_args, "--ckpt_path", str(last), "--prediction_writer.output", str(out_csv), net=net)
    assert {"date", "ticker", "forecast"} <= set(pd.read_csv(out_csv).columns)

    run("diagnose", cli_args, "--steps", "10", "--lr_find", "false", net=net)
    report = capsys.readouterr().out
    assert "0 FAIL" in report or "[FAIL]" in report  # a report, not a crash
    if net == "seed_lstm":
        assert "recurrent singular values" in report
    else:
        assert "[n/a] 3. initialisation: no recurrent layer" in report
    assert "model.forget_bias" not in report and "model.init" not in report  # keys this network ignores

    run("lr_find", cli_args, "--num_training", "20", "--trainer.limit_train_batches", "1.0", "--trainer.max_epochs", "5", net=net)
    assert "lr_find:" in capsys.readouterr().out


def test_truncated_bptt_carries_any_nested_state_and_refuses_a_stateless_network(cli_args, tmp_path, capsys):
    cli = run("fit", cli_args, "--model.tbptt_steps", "8", "--model.burn_in", "4", net="seed_lstm")
    assert cli.trainer.global_step == 5 * 2  # 5 batches x (16 / 8) chunks
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        run("fit", cli_args, "--model.tbptt_steps", "8", net="transformer")
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(err) == 1 and "model.tbptt_steps" in err[0] and "no state" in err[0]
    assert len(list((tmp_path / "logs" / "volatility").iterdir())) == 1  # the refused run wrote nothing


def test_a_network_breaking_the_contract_is_one_line(cli_args, capsys):
    with pytest.raises(SystemExit):
        main(cli_args("fit", "configs/volatility.yaml", "--model.net", '{"class_path": "torch.nn.Identity"}'))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.net" in err[0]
    with pytest.raises(SystemExit):  # a key the network does not take is never silently ignored
        main(cli_args("fit", "configs/volatility.yaml", "--model.net.init_args.hidden_size", "32"))
    assert "hidden_size" in capsys.readouterr().err


def user_config(tmp_path, module: str) -> str:
    path = tmp_path / "sines.yaml"
    path.write_text(
        f"config: {ROOT / 'configs' / 'defaults.yaml'}\n"
        "trainer.logger.init_args.name: sines\n"
        f"data:\n  class_path: {module}\n"
    )
    return str(path)


def test_own_data_module_runs_fit_test_predict_diagnose(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["forecasting"])
    common = ["--config", str(ROOT / "configs/debug.yaml"), "--trainer.logger.init_args.save_dir", str(tmp_path),
              "--trainer.enable_progress_bar", "false"]  # fmt: skip
    config = user_config(tmp_path, "tests.user_data.SineDataModule")
    cli = main(["fit", "--config", config, *common])
    assert cli.model.hparams.n_features == 2 and "val/loss" in cli.trainer.callback_metrics
    assert "skill vs" not in capsys.readouterr().out.split("fit:")[1].splitlines()[1]  # no baselines: says so
    last = next(tmp_path.rglob("last.ckpt"))
    main(["test", "--config", config, *common, "--ckpt_path", str(last)])
    out_csv = tmp_path / "p.csv"
    main(["predict", "--config", config, *common, "--ckpt_path", str(last), "--prediction_writer.output", str(out_csv)])
    table = pd.read_csv(out_csv)
    assert list(table.columns) == ["sample", "h", "target", "forecast", "actual"] and len(table) == 32
    main(["diagnose", "--config", config, *common, "--steps", "10", "--lr_find", "false"])
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize(
    "module, words",
    [
        ("tests.user_data.NoSizes", ["NoSizes lacks n_features, horizon", "ForecastData"]),
        ("tests.user_data.WrongShape", ["x of shape (2, 20, 2)", "n_features=3"]),
    ],
)
def test_a_data_module_missing_the_contract_is_refused_before_training(module, words, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["forecasting"])
    with pytest.raises(SystemExit) as exit:
        main(["fit", "--config", user_config(tmp_path, module), "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(err) == 1 and all(w in err[0] for w in words), err
    assert not (tmp_path / "logs").exists()


def test_a_feature_needing_more_warm_up_than_it_declares_says_so(prices_csv):
    import numpy as np

    from forecasting.data import features as F
    from forecasting.data.datamodule import PriceDataModule
    from forecasting.errors import ForecastingError
    from tests.conftest import dm_kwargs

    @F.transform("close")  # forgot warmup=5
    def rolling_mean_5(f):
        return np.convolve(np.r_[[np.nan] * 4, f["close"].to_numpy()], np.ones(5) / 5, mode="valid")

    try:
        dm = PriceDataModule(**dm_kwargs(prices_csv, features=["log_return", "rolling_mean_5"]))
        with pytest.raises(ForecastingError, match=r"rolling_mean_5.*warm-up rows.*warmup=N"):
            dm.setup("fit")
        F.TRANSFORMS["rolling_mean_5"] = F.Transform(rolling_mean_5, ("close",), warmup=4)
        dm = PriceDataModule(**dm_kwargs(prices_csv, features=["log_return", "rolling_mean_5"]))
        dm.setup("fit")  # declared: the warm-up rows stay out of every window
        assert len(dm.dataset("train")) > 0
    finally:
        F.TRANSFORMS.pop("rolling_mean_5", None)
