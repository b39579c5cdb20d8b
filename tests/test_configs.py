"""Every example config with every overlay: it builds (sizes linked, modes as asked), and with the
debug overlay it trains, or it is refused in one line where the pair cannot work."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from forecasting.cli import main
from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# An example builds on defaults.yaml (its first key); an overlay stacks on any example.
EXAMPLES = [p.name for p in CONFIGS if "\nconfig: defaults.yaml" in "\n" + p.read_text()]
# Search spaces of `tune` (*_space.yaml) are not configs.
OVERLAYS = [p.name for p in CONFIGS if p.name not in EXAMPLES and p.name not in ("defaults.yaml", "debug.yaml")
            and not p.name.endswith("_space.yaml")]  # fmt: skip
# Pairs that cannot work, and the key the one-line refusal must name.
# The adding problem has sequences, not windows, and no stream mode.
REFUSED = {("adding.yaml", "long_tbptt.yaml"): "window", ("adding.yaml", "stream.yaml"): "mode"}
MULTI_PROCESS = {"ddp_cpu.yaml", "multi_gpu.yaml"}  # trained by test_ddp.py in subprocesses


def args_for(configs, tmp_path) -> list[str]:
    args = [arg for name in configs for arg in ("--config", str(ROOT / "configs" / name))]
    if any("accelerator: gpu" in (ROOT / "configs" / name).read_text() for name in configs):
        # No GPU here: the file must still parse; build the run for one CPU process instead.
        args += ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto"]
    return args + ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--trainer.enable_progress_bar", "false"]


def test_examples_and_overlays_are_found():
    assert {"volatility.yaml", "returns.yaml", "adding.yaml"} <= set(EXAMPLES)
    assert {"fast.yaml", "long_tbptt.yaml", "seed_lstm.yaml", "tcn.yaml", "ddp_cpu.yaml"} <= set(OVERLAYS)


@pytest.mark.parametrize("example", EXAMPLES)
@pytest.mark.parametrize("overlay", [None, *OVERLAYS])
def test_every_example_with_every_overlay_builds(example, overlay, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["forecasting"])
    configs = [example, *([overlay] if overlay else []), "debug.yaml"]
    if (example, overlay) in REFUSED:
        with pytest.raises(SystemExit) as exit:
            main(args_for(configs, tmp_path), run=False)
        assert exit.value.code == 2 and REFUSED[example, overlay] in capsys.readouterr().err
        assert not (tmp_path / "logs").exists()
        return
    cli = main(args_for(configs, tmp_path), run=False)
    assert cli.model.hparams.n_features == cli.datamodule.n_features
    assert cli.model.hparams.horizon == cli.datamodule.horizon
    assert cli.datamodule.dense_targets == cli.model.dense  # truncated BPTT gets a target per step
    assert cli.trainer.max_epochs == 1 and cli.trainer.val_check_interval == 1.0  # debug wins over the example
    assert (cli.model.hparams.tbptt_steps is not None) == (overlay in ("long_tbptt.yaml", "stream.yaml"))
    assert getattr(cli.datamodule, "mode", "windows") == ("stream" if overlay == "stream.yaml" else "windows")
    if overlay == "stream.yaml":  # the chunk length reaches the data module
        assert cli.datamodule.tbptt_steps == cli.model.hparams.tbptt_steps == 16
    per_step = {"NonFiniteGuard", "GradientNorms", "GradientHistograms"} & {type(c).__name__ for c in cli.trainer.callbacks}
    assert per_step == (set() if overlay == "fast.yaml" else {"NonFiniteGuard", "GradientNorms", "GradientHistograms"})
    net = cli.model.hparams.net["class_path"]
    assert net.endswith({"tcn.yaml": "TCN"}.get(overlay, "StackedRNN"))
    assert cli.trainer.logger.save_dir == str(tmp_path / "logs")  # defaults.yaml's logger, the example's name
    assert cli.trainer.logger.name == example.removesuffix(".yaml")


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES)
@pytest.mark.parametrize("overlay", [None, *sorted(set(OVERLAYS) - MULTI_PROCESS)])
def test_every_example_with_every_overlay_trains_with_the_debug_overlay(example, overlay, tmp_path, monkeypatch):
    if (example, overlay) in REFUSED:
        pytest.skip("refused in one line: test_every_example_with_every_overlay_builds")
    monkeypatch.setattr("sys.argv", ["forecasting"])
    configs = [example, *([overlay] if overlay else []), "debug.yaml"]
    # 10 steps: the per-layer gradient norms are written every 10 optimiser steps (defaults.yaml)
    # stream.yaml: k = burn_in = 16, so the first batch (all lanes in burn-in) makes no step
    batches = "11" if overlay == "stream.yaml" else "10"
    cli = main(["fit", *args_for(configs, tmp_path), "--trainer.limit_train_batches", batches])
    assert cli.trainer.global_step >= 10 and "val/loss" in cli.trainer.callback_metrics
    run = next((tmp_path / "logs").glob("*/version_0"))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    scalars = set(EventAccumulator(str(run)).Reload().Tags()["scalars"])
    if overlay == "seed_lstm.yaml":  # LSTM(64) -> LSTM(32): each layer its own tags
        for layer in ("layers.0", "layers.1"):
            assert {f"grad_norm/{layer}_hidden_to_hidden", f"grad_norm/{layer}_hh_forget_gate"} <= scalars
            assert f"gates/{layer}_forget_saturated" in scalars
        assert "grad_flow/first_to_last" in scalars
    if overlay == "tcn.yaml":  # no recurrent layer: no gate tags, the rest as always
        assert not any(tag.startswith("gates/") for tag in scalars)
        assert {"grad_flow/first_to_last", "grad_norm/head"} <= scalars
