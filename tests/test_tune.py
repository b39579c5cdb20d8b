"""python -m forecasting tune: real short searches on a tiny adding problem."""

import os
import subprocess
import sys

import optuna
import pytest
import torch
import yaml

from forecasting.cli import main
from forecasting.tune import tune
from tests.conftest import ROOT

LR = "model.optimizer.init_args.lr"
SPACE = {
    LR: {"float": [1.0e-5, 100.0], "log": True},
    "model.gradient_clip_val": {"choice": [None, 1.0]},
    "data.init_args.batch_size": {"choice": [16, 32]},
}
# SGD, not the config's Adam: Adam's step is about lr whatever the gradient, so only SGD with a huge
# lr and no clipping reliably blows up within a few steps. The base lr 1e-5 is the deliberately bad start.
SMALL = [
    "--data.init_args.n_train", "256", "--data.init_args.n_val", "64", "--data.init_args.n_test", "64",
    "--data.init_args.seq_len", "10", "--data.init_args.batch_size", "32",
    "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "8", "--trainer.val_check_interval", "1.0",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--model.optimizer.class_path", "torch.optim.SGD", f"--{LR}", "1e-5", "--model.net.init_args.hidden_sizes", "8",
]  # fmt: skip


@pytest.fixture
def search(tmp_path, monkeypatch):
    """tune's arguments for the tiny adding problem, logging under tmp_path; and the study's folder."""
    monkeypatch.setattr("sys.argv", ["forecasting"])
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    # The diagnostics tune reads, without the figures and histograms that cost most of a tiny run.
    callbacks = tmp_path / "callbacks.yaml"
    names = ["nonfinite_guard.NonFiniteGuard", "grad_norms.GradientNorms", "grad_flow.GradientFlow"]
    callbacks.write_text(
        yaml.safe_dump({"trainer": {"callbacks": [{"class_path": f"forecasting.callbacks.{n}"} for n in names]}})
    )

    def args(*extra: str, space_path=space) -> list[str]:
        return [
            "--config", str(ROOT / "configs/adding.yaml"), "--config", str(ROOT / "configs/debug.yaml"),
            "--config", str(callbacks), "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), *SMALL,
            "--tune.space", str(space_path), *extra,
        ]  # fmt: skip

    return args, tmp_path / "logs" / "adding" / "tune" / "adding"


@pytest.mark.slow
def test_search_beats_a_bad_start_explains_a_divergence_and_writes_a_config_fit_reproduces(search, tmp_path, capsys):
    args, study_dir = search
    study_dir.mkdir(parents=True)
    storage = f"sqlite:///{study_dir / 'study.db'}"
    forced = optuna.create_study(storage=storage, study_name="adding")
    forced.enqueue_trial({LR: 100.0, "model.gradient_clip_val": None, "data.init_args.batch_size": 32})
    study = tune(args("--tune.trials", "6", "--tune.seed", "0"))
    out = capsys.readouterr().out
    trials = study.trials
    assert len(trials) == 6 and all(t.state.is_finished() for t in trials)

    diverged = trials[0]  # the enqueued huge lr without clipping
    assert diverged.state == optuna.trial.TrialState.PRUNED
    assert diverged.user_attrs["failure"].startswith("non-finite at step ")
    assert "non-finite" in out.split("why trials failed")[1]
    assert (study_dir / "trial_000" / "config.yaml").is_file()

    start = next(t for t in trials if t.user_attrs.get("start"))  # the base config's own values
    assert start.params[LR] == pytest.approx(1e-5)
    best = study.best_trial
    assert best.value < 0.5 * start.value, (best.value, start.value)
    for key in (
        "val/loss",
        "val/skill_vs_mean",
        "val/pred_std_ratio",
        "grad_norm/clip_fraction",
        "grad_flow/first_to_last",
    ):
        assert key in best.user_attrs, key
    assert best.user_attrs["val/loss"] == pytest.approx(best.value)

    summary = (study_dir / "summary.txt").read_text()
    assert "top " in summary and f"best: trial {best.number}" in summary and "importance" in summary
    assert (study_dir / "history.png").stat().st_size > 0 and (study_dir / "importances.png").stat().st_size > 0
    assert study.user_attrs["test"]["trial"] == best.number and "test/loss" in study.user_attrs["test"]["metrics"]
    assert "TEST (scored once, after the search; never used to choose)" in out

    # best.yaml as is: the same seed and values give the best trial's loss again (so nothing leaked between trials).
    refit = tmp_path / "refit"
    cli = main(["fit", "--config", str(study_dir / "best.yaml"), "--trainer.logger.init_args.save_dir", str(refit)])
    assert cli.datamodule.batch_size == best.params["data.init_args.batch_size"]
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(best.params[LR])
    assert float(cli.trainer.checkpoint_callback.best_model_score) == pytest.approx(best.value, rel=1e-5)
    assert (refit / "adding").is_dir()  # logs where the base config logs, not into a trial's folder


def test_unknown_space_key_is_one_line_before_any_trial(search, tmp_path, capsys):
    args, study_dir = search
    space = tmp_path / "bad_space.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "model.net.init_args.hiden_sizes": {"int": [4, 8]}}))
    with pytest.raises(SystemExit) as exit_:
        main(["tune", *args("--tune.trials", "2", space_path=space)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.net.init_args.hiden_sizes" in err and "not a config key" in err, err
    assert not (tmp_path / "logs").exists()  # no study, no trial folder


def test_malformed_range_is_one_line(search, tmp_path, capsys):
    args, _ = search
    space = tmp_path / "bad_range.yaml"
    space.write_text(yaml.safe_dump({LR: {"float": [0.1, 0.01]}}))
    with pytest.raises(SystemExit):
        main(["tune", *args(space_path=space)])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and LR in err and "low < high" in err, err


@pytest.mark.slow
def test_continue_after_a_stop_and_two_processes_share_one_sqlite_file(search, tmp_path):
    args, study_dir = search
    first = tune(args("--tune.trials", "2", "--tune.seed", "1", "--tune.test", "false"))
    assert len(first.trials) == 2
    # Continue to 6 with two processes at once on the same SQLite file.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "forecasting", "tune", *args("--tune.trials", "6", "--tune.test", "false")]
    workers = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="adding", storage=f"sqlite:///{study_dir / 'study.db'}")
    finished = [t for t in study.trials if t.state.is_finished()]
    # Each worker stops once 6 are finished; one may start a last trial while the other finishes: up to 7.
    assert 6 <= len(finished) <= 7 and len(study.trials) == len(finished)
    assert sorted(t.number for t in study.trials) == list(range(len(study.trials)))
    workers_seen = {t.user_attrs["worker"] for t in study.trials[2:]}
    assert len(workers_seen) == 2, workers_seen  # both processes added trials
    for t in study.trials:  # every trial has its own run folder with its config
        assert (study_dir / f"trial_{t.number:03d}" / "config.yaml").is_file()
    assert torch.load(study.trials[0].user_attrs["checkpoint"], weights_only=True)["global_step"] > 0
