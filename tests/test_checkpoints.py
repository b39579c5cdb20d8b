"""Interrupted runs resume, checkpoints are never half-written, unsafe or mismatched ones are refused."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from forecasting.checkpoints import AtomicCheckpointIO
from forecasting.cli import main
from tests.conftest import ROOT


def test_a_failed_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises, the old file must survive
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "bad": lambda: None}, path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_whose_pickle_runs_code_is_refused(cli_args, tmp_path, capsys):
    evil, marker = tmp_path / "evil.ckpt", tmp_path / "pwned"
    payload = RunsCode()
    payload.marker = marker
    torch.save({"state_dict": {}, "payload": payload}, evil)
    with pytest.raises(SystemExit) as exit_:
        main(cli_args("predict", "configs/volatility.yaml", "--ckpt_path", str(evil)))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused" in err[0] and "evil.ckpt" in err[0]
    assert not marker.exists()


@pytest.mark.parametrize(
    "override, key",
    [
        (["--data.init_args.horizon", "2"], "data.horizon=1"),
        (["--data.init_args.features", "[log_return, gk_log_var]"], "data.features="),
        (["--model.net.init_args.hidden_sizes", "[64, 16]"], "model.net.init_args.hidden_sizes=64"),
    ],
)
def test_a_checkpoint_from_another_config_is_refused(cli_args, tmp_path, capsys, override, key):
    main(cli_args("fit"))
    last = next((tmp_path / "logs").rglob("last.ckpt"))
    capsys.readouterr()
    for subcommand in ("test", "predict"):
        with pytest.raises(SystemExit):
            main(cli_args(subcommand, "configs/volatility.yaml", "--ckpt_path", str(last), *override))
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and key in err[0] and "config.yaml" in err[0]


def weights(path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def test_resumed_at_an_epoch_boundary_equals_uninterrupted(cli_args, tmp_path):
    # No dropout: its masks come from the global RNG, which a new process re-seeds.
    common = ["--model.net.init_args.dropout", "0.0", "--trainer.limit_val_batches", "1"]
    main(cli_args("fit", "configs/volatility.yaml", *common, "--trainer.max_epochs", "2"))
    straight = weights(tmp_path / "logs" / "volatility" / "version_0" / "checkpoints" / "last.ckpt")
    main(cli_args("fit", "configs/volatility.yaml", *common, "--trainer.logger.init_args.name", "interrupted"))
    main(cli_args(
        "fit", "configs/volatility.yaml", *common, "--trainer.logger.init_args.name", "interrupted",
        "--ckpt_path", "last", "--trainer.max_epochs", "2",
    ))  # fmt: skip
    resumed = weights(tmp_path / "logs" / "interrupted" / "version_0" / "checkpoints" / "last.ckpt")
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_killed_mid_epoch_resumes_and_finishes(cli_args, tmp_path):
    args = cli_args(
        "fit", "configs/volatility.yaml", "--trainer.max_epochs", "30", "--trainer.limit_train_batches", "1.0",
        "--checkpoint.every_n_train_steps", "2",
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "forecasting", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    last = tmp_path / "logs" / "volatility" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["global_step"] >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)  # mid-epoch: steps are checkpointed every 2 of ~6 per epoch
    proc.wait()
    killed = torch.load(last, weights_only=True)  # loads: a kill never leaves it half-written
    finish = str(killed["epoch"] + 2)
    cli = main(args + ["--trainer.max_epochs", finish, "--ckpt_path", "last"])
    assert cli.trainer.global_step > killed["global_step"] and cli.trainer.current_epoch == int(finish)


def test_last_ckpt_is_the_latest_state_and_never_serialised_twice(cli_args, tmp_path, monkeypatch):
    """Lightning alone writes last.ckpt only when a top-k file is written at the same step (so it
    stops at the best epoch), and serialises that state twice; Checkpoints links it instead."""
    writes = []
    save = AtomicCheckpointIO.save_checkpoint
    def counted(self, checkpoint, path, storage_options=None):
        writes.append(path)
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", counted)
    run_dir = tmp_path / "logs" / "volatility"

    def fit(mode):
        main(cli_args("fit", "configs/volatility.yaml", "--trainer.max_epochs", "3", "--checkpoint.mode", mode))
        ckpts = sorted(run_dir.glob("version_*"))[-1] / "checkpoints"
        best = next(p for p in ckpts.glob("epoch*.ckpt"))
        return ckpts / "last.ckpt", best

    # mode max: the top-k file keeps the first epoch (val/loss falls), last.ckpt must still move on
    last, best = fit("max")
    assert torch.load(best, weights_only=True)["epoch"] == 0, "scenario changed: val/loss no longer falls"
    assert torch.load(last, weights_only=True)["epoch"] == 2
    assert os.stat(last).st_ino != os.stat(best).st_ino
    assert len(writes) == 3  # epoch 0: top-k (last linked); epochs 1, 2: last.ckpt alone

    # mode min: every epoch improves, each is written once and last.ckpt is the same file
    writes.clear()
    last, best = fit("min")
    assert torch.load(best, weights_only=True)["epoch"] == 2
    assert os.stat(last).st_ino == os.stat(best).st_ino
    assert len(writes) == 3 and all(Path(p).name != "last.ckpt" for p in writes)
    assert not list(last.parent.glob(".*tmp"))  # no temporary link left behind
