"""Every `python -m forecasting ...` command in a ```bash block of README.md and docs/*.md runs,
with the debug overlay added, in a folder holding the repository's configs/ and data/ (so the
paths the docs use, like logs/volatility/version_0, are the ones a reader gets); and the code
recipes of docs/make_it_yours.md work as printed. No stale command or placeholder ships."""

import os
import re
import shlex
import subprocess
import sys

import pandas as pd
import pytest
import torch

from forecasting.cli import main
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MULTI_PROCESS = ("ddp_cpu.yaml", "multi_gpu.yaml")  # DDP re-launches its command: run it as a subprocess


def commands(path) -> list[str]:
    """The `python -m forecasting` lines of the file's bash blocks, continuations joined."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("python -m forecasting"):
                found.append(line.strip())
    return found


ALL = [(path.relative_to(ROOT).as_posix(), cmd) for path in DOCS for cmd in commands(path)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A reader's checkout: configs/ and data/ as in the repository, logs/ written here."""
    path = tmp_path_factory.mktemp("reader")
    for name in ("configs", "data"):
        (path / name).symlink_to(ROOT / name)
    return path


def test_the_docs_show_commands():
    assert len(ALL) >= 10 and {doc for doc, _ in ALL} >= {"README.md", "docs/diagnostics.md"}


@pytest.mark.slow
@pytest.mark.parametrize("doc, command", ALL, ids=[f"{d}:{c[21:70]}" for d, c in ALL])
def test_every_documented_command_runs(doc, command, workdir, monkeypatch):
    args = shlex.split(command, comments=True)[3:]  # after `python -m forecasting`
    if "--help" not in args and "--print_config" not in args:
        config = "configs/debug.yaml"
        if "lr_find" in args:  # the sweep needs more batches than the debug epoch has
            args += ["--trainer.limit_train_batches", "1.0", "--num_training", "30"]
        args += ["--config", config, "--trainer.enable_progress_bar", "false"]
        if args[0] == "fit" and "last" in args:  # resuming needs an epoch left after the debug epoch
            args += ["--trainer.max_epochs", "2"]
    if any(name in command for name in MULTI_PROCESS):
        if "multi_gpu" in command and not torch.cuda.is_available():
            pytest.skip("needs GPUs")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        done = subprocess.run([sys.executable, "-m", "forecasting", *args], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return
    if args[0] in ("backtest", "tune"):  # each its own output folder: one refuses another's arguments
        own = workdir / f"run_{abs(hash(command))}"
        own.mkdir(exist_ok=True)
        for name in ("configs", "data"):
            if not (own / name).exists():
                (own / name).symlink_to(ROOT / name)
        workdir = own
    monkeypatch.chdir(workdir)
    monkeypatch.setattr("sys.argv", ["forecasting"])
    try:
        main(args)
    except SystemExit as exit:  # --help and --print_config exit 0 once printed
        assert exit.code == 0, f"{doc}: `{command}` exited {exit.code}"


def python_block(doc: str, marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def test_the_feature_and_network_recipes_work_as_printed(tmp_path, prices_csv, monkeypatch, capsys):
    (tmp_path / "my_features.py").write_text(python_block("docs/make_it_yours.md", "@transform"))
    (tmp_path / "my_nets.py").write_text(python_block("docs/make_it_yours.md", "class MyGRU"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # python -m puts the working directory first
    monkeypatch.setattr("sys.argv", ["forecasting"])
    cli = main([
        "fit", "--config", str(ROOT / "configs/volatility.yaml"), "--config", str(ROOT / "configs/debug.yaml"),
        "--data.init_args.path", str(prices_csv), "--data.init_args.adjust_column", "null",
        "--data.init_args.window", "16", "--data.init_args.val_start", "0.6", "--data.init_args.test_start", "0.8",
        "--data.init_args.features", "[log_return, gk_log_var, my_features.realised_vol_20]",
        "--model.net", '{"class_path": "my_nets.MyGRU", "init_args": {"hidden": 12}}',
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    assert type(cli.model.net).__name__ == "MyGRU" and cli.model.net.rnn.hidden_size == 12
    frame = cli.datamodule.frames["fit"]
    vol = frame["f:my_features.realised_vol_20"]
    # warm-up rows are NaN by construction and never in a window; the rest is a 20-day std of returns
    first = frame[frame.ticker == "AAA"]
    assert vol[first.index[:20]].isna().all() and vol[first.index[20:]].notna().all()
    r = pd.Series(first["f:log_return"].to_numpy())
    assert vol[first.index[25]] == pytest.approx(r.iloc[6:26].std(), rel=1e-9)
    assert "val/loss" in cli.trainer.callback_metrics
