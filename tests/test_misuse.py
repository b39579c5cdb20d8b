"""A corpus of misuse: every refused run exits 2 with ONE line on stderr, no traceback, and writes
nothing under the log dir; the cases that used to pass silently now do the right thing."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from forecasting.checkpoints import CHECKSUM_KEY
from forecasting.cli import main
from forecasting.data.datamodule import PriceDataModule
from forecasting.errors import ForecastingError
from tests.conftest import ROOT, dm_kwargs, make_prices


def cli(root: Path, data: Path, subcommand: str = "fit", *extra: str, config: str = "configs/volatility.yaml"):
    return [
        subcommand, "--config", str(ROOT / config), "--config", str(ROOT / "configs/debug.yaml"),
        "--data.init_args.path", str(data), "--data.init_args.adjust_column", "null",
        "--data.init_args.window", "16", "--data.init_args.val_start", "0.6", "--data.init_args.test_start", "0.8",
        "--data.init_args.bad_values", "missing", "--data.init_args.missing", "ffill",
        "--trainer.logger.init_args.save_dir", str(root / "logs"), "--trainer.enable_progress_bar", "false",
        *extra,
    ]  # fmt: skip


def files(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def refused(args: list[str], capsys, watch: Path) -> str:
    """Run the CLI in-process; it must exit 2 with one 'error:' line and leave `watch` untouched."""
    capsys.readouterr()
    before = files(watch)
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_.value.code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert files(watch) == before
    return err[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The prices file (one zero-volume day, like NASDAQ's 2015-05-12) and one trained run."""
    argv, sys.argv = sys.argv, ["forecasting"]  # LightningCLI warns about pytest's own arguments
    root = tmp_path_factory.mktemp("corpus")
    prices = make_prices()
    prices.loc[50, "volume"] = 0
    data = root / "prices.csv"
    prices.to_csv(data, index=False)
    main(cli(root, data))  # runs: bad_values: missing hands the zero to missing: ffill
    yield root, data, next((root / "logs").rglob("last.ckpt"))
    sys.argv = argv


def test_a_zero_volume_day_runs_with_bad_values_missing_and_is_reported(corpus):
    root, _, last = corpus
    report = (last.parent.parent / "data_quality.txt").read_text()
    assert "AAA" in report and "2020-03-11 column 'volume': volume 0.0 is not positive" in report
    assert "BBB" not in report  # only tickers with something to report are listed
    assert torch.load(last, weights_only=True)[CHECKSUM_KEY]


CONFIG_CASES = {
    "window not an int": (["--data.init_args.window", "1e9"], "data.init_args.window: Expected a <class 'int'>"),
    "unknown data key": (["--data.init_args.nokey", "3"], "Option 'nokey' is not accepted"),
    "unknown class": (["--data.class_path", "nowhere.Module"], "No module named 'nowhere'"),
    "model key type": (["--model.net.init_args.num_layers", "big"], "num_layers: Expected a <class 'int'>"),
    "negative max_epochs": (["--trainer.max_epochs", "-5"], "trainer.max_epochs: -5"),
    "accumulate 0": (["--trainer.accumulate_grad_batches", "0"], "trainer.accumulate_grad_batches: 0 is not allowed"),
    "validate every 0 epochs": (["--trainer.check_val_every_n_epoch", "0"], "use 1 or more"),
    "sanity steps -2": (["--trainer.num_sanity_val_steps", "-2"], "trainer.num_sanity_val_steps: -2"),
    "bad precision": (["--trainer.precision", "7"], "trainer.precision: Expected a typing.Literal"),
    "bad strategy": (["--trainer.strategy", "warp_drive"], "trainer: "),
    "negative lr": (["--model.optimizer.init_args.lr", "-1"], "model.optimizer.init_args.lr: -1.0 is negative"),
    "negative weight decay": (["--model.optimizer.init_args.weight_decay", "-0.1"], "weight_decay: -0.1"),
    "bad betas": (["--model.optimizer.init_args.betas", "[2.0, 0.9]"], "model.optimizer (torch.optim.AdamW)"),
    "bad scheduler": (["--model.lr_scheduler.init_args.factor", "2.0"], "model.lr_scheduler"),
    "burn_in >= window": (["--model.dense_loss", "true", "--model.burn_in", "16"], "model.burn_in (16)"),
    "negative workers": (["--data.init_args.num_workers", "-1"], "data.num_workers: -1"),
    "monitor typo": (["--checkpoint.monitor", "val/los"], "did you mean 'val/loss'"),
    "early stopping typo": (["--early_stopping.monitor", "val_loss"], "early_stopping.monitor: 'val_loss'"),
    "empty tickers": (["--data.init_args.tickers", "[]"], "data.tickers: the list is empty"),
    "time column null": (["--data.init_args.time_column", "null"], "data.time_column: required"),
    "bad date format": (["--data.init_args.date_format", "%Q"], "data.date_format '%Q'"),
    "unknown zone": (["--data.init_args.timezone", "Mars/Olympus"], "data.timezone"),
    "bad_values policy": (["--data.init_args.bad_values", "ignore"], "data.bad_values"),
    "validate without weights": (["SUB=validate"], "validate needs trained weights: pass --ckpt_path"),
    "predict without weights": (["SUB=predict"], "predict needs trained weights"),
    "best from the CLI, no run": (["SUB=test", "--ckpt_path", "best"], "--ckpt_path best: no best checkpoint"),
    "last, no run": (["SUB=validate", "--ckpt_path", "last"], "--ckpt_path last: no last.ckpt under"),
    "fit last, no run": (["--ckpt_path", "last"], "--ckpt_path last: no last.ckpt"),
}


@pytest.mark.parametrize("extra, expected", CONFIG_CASES.values(), ids=CONFIG_CASES.keys())
def test_config_misuse_is_one_line_and_writes_nothing(tmp_path, corpus, capsys, extra, expected):
    _, data, _ = corpus
    sub = next((e[4:] for e in extra if e.startswith("SUB=")), "fit")
    extra = [e for e in extra if not e.startswith("SUB=")]
    assert expected in refused(cli(tmp_path, data, sub, *extra), capsys, tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_on_a_cpu_machine(tmp_path, corpus, capsys):
    message = refused(cli(tmp_path, corpus[1], "fit", "--trainer.accelerator", "gpu"), capsys, tmp_path)
    assert "trainer.accelerator='gpu'" in message


def test_a_precision_the_cpu_cannot_run_is_refused_before_anything_is_written(tmp_path, corpus, capsys):
    root, data, _ = corpus
    net = ["--model.net.class_path", "tests.nets.Float32Only"]
    for precision in ("bf16-mixed", "16-mixed"):  # Lightning runs 16-mixed as bf16-mixed on a CPU
        line = refused([*cli(tmp_path, data, "fit", *net, "--trainer.precision", precision)], capsys, tmp_path)
        assert line.startswith(f"error: trainer.precision: {precision}") and "use 32-true" in line, line
        assert "could not create a primitive descriptor" in line
    # In float32 the same network trains: the check refuses the setting, not the network.
    main([*cli(tmp_path, data, "fit", *net, "--trainer.max_steps", "2")])
    assert list((tmp_path / "logs").rglob("*.ckpt"))


def test_files_named_by_keys_that_cannot_be_used(tmp_path, corpus, capsys):
    data = corpus[1]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is a file, not a folder" in refused(
        cli(tmp_path, data, "fit", "--trainer.logger.init_args.save_dir", str(afile)), capsys, tmp_path
    )
    assert "is a folder; set data.path" in refused(
        cli(tmp_path, data, "fit", "--data.init_args.path", str(tmp_path)), capsys, tmp_path
    )
    for output, expected in ((tmp_path, "is a folder"), (afile / "p.csv", "afile is a file, not a folder")):
        args = cli(tmp_path, data, "predict", "--ckpt_path", str(corpus[2]), "--prediction_writer.output", str(output))
        assert expected in refused(args, capsys, tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: [1\n")
    message = refused(cli(tmp_path, data, "fit", "--config", str(bad)), capsys, tmp_path)
    assert "bad.yaml: line 3" in message and "not valid YAML" in message


@pytest.fixture
def ckpt_files(tmp_path, corpus):
    """Malformed and foreign checkpoint files, made from the trained one."""
    last = corpus[2]
    made = {"empty": tmp_path / "empty.ckpt", "text": tmp_path / "text.ckpt"}
    made["empty"].write_bytes(b"")
    made["text"].write_text("epoch=3 val_loss=0.5\n")
    for name, obj in {
        "tensor": torch.zeros(3),
        "list": [1, 2, 3],
        "no_state_dict": {"epoch": 1, "weights": torch.zeros(2)},
        "bare_state_dict": torch.load(last, weights_only=True)["state_dict"],
    }.items():
        made[name] = tmp_path / f"{name}.ckpt"
        torch.save(obj, made[name])
    # 64 flipped bytes inside the largest weight: the file still loads; the checksum tells.
    blob = bytearray(last.read_bytes())
    weight = max(torch.load(last, weights_only=True)["state_dict"].values(), key=lambda t: t.numel())
    at = bytes(blob).find(weight.numpy().tobytes()[:256]) + 64
    assert at > 64
    blob[at : at + 64] = bytes(b ^ 0xFF for b in blob[at : at + 64])
    made["flipped"] = tmp_path / "flipped.ckpt"
    made["flipped"].write_bytes(bytes(blob))
    return made


CKPT_CASES = {
    "empty": "is empty (0 bytes)",
    "text": "corrupted or another format",
    "tensor": "holds a Tensor, not a Lightning checkpoint",
    "list": "holds a list",
    "no_state_dict": "has no 'state_dict'",
    "bare_state_dict": "has no 'state_dict'",
    "flipped": "is corrupted",
}


@pytest.mark.parametrize("name, expected", CKPT_CASES.items(), ids=CKPT_CASES.keys())
def test_malformed_checkpoints_are_one_line(tmp_path, corpus, capsys, ckpt_files, name, expected):
    args = cli(tmp_path, corpus[1], "validate", "--ckpt_path", str(ckpt_files[name]))
    assert expected in refused(args, capsys, tmp_path)


SETTING_CASES = {
    "split moved": (["--data.init_args.val_start", "0.5"], "data.val_start=0.6, but the config has 0.5"),
    "features": (["--data.init_args.features", "[log_return]"], "data.features"),
    "horizon": (["--data.init_args.horizon", "2"], "horizon"),
    "scaler": (["--data.init_args.scaler", "robust"], "data.scaler='standard'"),
}


@pytest.mark.parametrize("extra, expected", SETTING_CASES.values(), ids=SETTING_CASES.keys())
def test_data_settings_that_differ_from_the_checkpoint_are_refused(tmp_path, corpus, capsys, extra, expected):
    args = cli(tmp_path, corpus[1], "validate", "--ckpt_path", str(corpus[2]), *extra)
    assert expected in refused(args, capsys, tmp_path)


def test_foreign_checkpoint_of_another_config(tmp_path, corpus, capsys):
    # The adding problem's model: 2 inputs, other network sizes; its hyperparameters say so.
    ckpt = torch.load(corpus[2], weights_only=True)
    ckpt["hyper_parameters"] = {**ckpt["hyper_parameters"], "n_features": 2}
    ckpt["datamodule_hyper_parameters"] = {"seq_len": 50}
    foreign = tmp_path / "adding.ckpt"
    torch.save({k: v for k, v in ckpt.items() if k != CHECKSUM_KEY}, foreign)
    args = cli(tmp_path, corpus[1], "test", "--ckpt_path", str(foreign))
    assert "model.n_features=2" in refused(args, capsys, tmp_path)


def test_a_finished_run_is_not_resumed_and_keeps_its_config(corpus, capsys):
    root, data, last = corpus
    config = last.parent.parent / "config.yaml"
    before = config.read_bytes()
    message = refused(cli(root, data, "fit", "--ckpt_path", "last"), capsys, root / "logs")
    assert "nothing to resume" in message and "--trainer.max_epochs 11" in message
    assert config.read_bytes() == before


def test_resume_cleans_stale_temporary_files_and_keeps_config_yaml(tmp_path, corpus):
    data = corpus[1]
    main(cli(tmp_path, data, "fit"))
    run = tmp_path / "logs" / "volatility" / "version_0"
    stale = run / "checkpoints" / ".last.ckpt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    before = (run / "config.yaml").read_bytes()
    main(cli(tmp_path, data, "fit", "--ckpt_path", "last", "--trainer.max_epochs", "2"))
    assert not stale.exists()
    assert (run / "config.yaml").read_bytes() == before
    assert yaml.safe_load((run / "config.resumed.yaml").read_text())["trainer"]["max_epochs"] == 2
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_ckpt_path_last_and_best_resolve_to_the_newest_run(corpus, capsys):
    root, data, last = corpus
    capsys.readouterr()
    main(cli(root, data, "validate", "--ckpt_path", "best"))
    out = capsys.readouterr().out
    assert f"using the best checkpoint {last.parent}" in out and "val/loss" in out


def test_max_steps_shorter_than_an_epoch_ends_without_early_stopping_crash(tmp_path, corpus):
    main(cli(tmp_path, corpus[1], "fit", "--trainer.max_steps", "3"))
    ckpt = torch.load(next((tmp_path / "logs").rglob("last.ckpt")), weights_only=True)
    assert ckpt["global_step"] == 3


# ---------------------------------------------------------------- data files (module-level, fast)
def setup_error(tmp_path, frame, name="bad.csv", **overrides) -> str:
    path = tmp_path / name
    frame.to_parquet(path) if name.endswith(".parquet") else frame.to_csv(path, index=False)
    with pytest.raises(ForecastingError) as err:
        PriceDataModule(**dm_kwargs(path, **overrides)).setup("fit")
    assert "\n" not in str(err.value)
    return str(err.value)


def corrupt(column, row, value):
    def edit(frame):
        if isinstance(value, str) or value is None:
            frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame

    return edit


DATA_CASES = {
    "zero volume": (corrupt("volume", 50, 0), "line 52, column 'volume': volume 0.0 is not positive"),
    "negative price": (corrupt("open", 40, -3.0), "line 42, column 'open': price -3.0 is not positive"),
    "high below low": (lambda f: f.assign(high=np.where(f.index == 60, f.low * 0.5, f.high)), "high below low"),
    "close above high": (lambda f: f.assign(close=np.where(f.index == 61, f.high * 2, f.close)), "close outside"),
    "1e300 price": (corrupt("close", 62, 1e300), "price 1e+300 is implausible"),
    "1e-300 price": (corrupt("low", 62, 1e-300), "price 1e-300 is implausible"),
    "constant ticker": (
        lambda f: f.assign(**{c: np.where(f.ticker == "BBB", 7.0, f[c]) for c in ("open", "high", "low", "close")}),
        "close unchanged for 20",
    ),  # noqa: E501
    "empty ticker": (corrupt("ticker", 7, ""), "line 9, column 'ticker': empty ticker name"),
    "NaN ticker": (corrupt("ticker", 7, "NaN"), "empty ticker name 'NaN'"),
    "boolean volume": (lambda f: f.assign(volume=f.index % 2 == 0), "column 'volume' holds true/false values"),
    "integer dates": (lambda f: f.assign(date=pd.to_datetime(f.date).dt.strftime("%Y%m%d").astype(int)), "%Y%m%d"),
}


@pytest.mark.parametrize("edit, expected", DATA_CASES.values(), ids=DATA_CASES.keys())
def test_bad_files_are_one_line(tmp_path, edit, expected):
    assert expected in setup_error(tmp_path, edit(make_prices()))


def test_none_ticker_in_parquet(tmp_path):
    assert "row 8, column 'ticker': empty ticker name" in setup_error(
        tmp_path, corrupt("ticker", 7, None)(make_prices()), "bad.parquet"
    )


def test_bad_values_missing_hands_rows_to_missing(tmp_path):
    frame = corrupt("volume", 50, 0)(make_prices())
    assert "data.missing, which is 'error'" in setup_error(tmp_path, frame, bad_values="missing")
    path = tmp_path / "ok.csv"
    frame.to_csv(path, index=False)
    for missing, kept in (("ffill", 600), ("drop", 599)):
        dm = PriceDataModule(**dm_kwargs(path, bad_values="missing", missing=missing))
        dm.setup("fit")
        assert len(dm.frames["fit"]) == kept
        quality = dm.quality[str(path)]["AAA"]
        assert quality["flagged"] == 1 and quality["filled" if missing == "ffill" else "dropped"] == 1
    aaa = dm.frames["fit"].query("ticker == 'AAA'")["time"]
    assert pd.Timestamp("2020-03-11") not in set(aaa) and pd.Timestamp("2020-03-10") in set(aaa)  # dropped


def test_numeric_looking_tickers_stay_distinct_and_blank_lines_count(tmp_path):
    frame = make_prices(120, ("01", "1", "1.0"))
    dm = PriceDataModule(**dm_kwargs(tmp_path / "t.csv", tickers=["01", "1.0"]))
    frame.to_csv(tmp_path / "t.csv", index=False)
    dm.setup("fit")
    assert sorted(dm.frames["fit"]["ticker"].unique()) == ["01", "1.0"]
    lines = frame.assign(volume=np.where(frame.index == 30, 0, frame.volume)).to_csv(index=False).splitlines()
    lines[5:5] = ["", ""]  # two blank lines before the bad row: it sits on line 34, not 32
    (tmp_path / "blank.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ForecastingError, match="line 34, column 'volume'"):
        PriceDataModule(**dm_kwargs(tmp_path / "blank.csv")).setup("fit")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["tune", "--config", "configs/volatility.yaml"], "tune: the following arguments are required: --tune.space"),
        (["tune", "--tune.space", "s.yaml", "--tune.trials", "many"], "argument --tune.trials: invalid int value"),
        (["backtest", "--config", "configs/volatility.yaml", "--scheme", "weird"], "argument --scheme: invalid choice"),
    ],
)
def test_usage_errors_of_backtest_and_tune_are_one_line(tmp_path, capsys, argv, expected):
    line = refused(argv, capsys, tmp_path)
    assert expected in line and line.endswith("--help)"), line
