"""Each diagnose check flags a deliberately broken case and passes a healthy one."""

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from forecasting import diagnose as D
from forecasting.callbacks.grad_flow import gradient_flow
from forecasting.cli import main
from forecasting.data.datamodule import PriceDataModule
from forecasting.models.forecaster import Forecaster
from forecasting.models.lstm import StackedRNN
from tests.conftest import dm_kwargs


def short_run(prices_csv, lr: float, clip: float | None, steps: int = 15) -> D.Recorder:
    torch.manual_seed(0)
    model = Forecaster(n_features=3, gradient_clip_val=clip, optimizer=lambda p: torch.optim.SGD(p, lr=lr))
    recorder = D.Recorder()
    D.quiet_trainer(max_steps=steps, callbacks=[recorder]).fit(model, PriceDataModule(**dm_kwargs(prices_csv)))
    return recorder


def test_exploding_flags_a_huge_learning_rate(prices_csv):
    broken = short_run(prices_csv, lr=1e4, clip=None)
    assert D.check_exploding(broken.norms, None, broken.nonfinite).status in (D.WARN, D.FAIL)
    healthy = short_run(prices_csv, lr=1e-2, clip=10.0)  # a clip value that only cuts spikes
    assert D.check_exploding(healthy.norms, 10.0, healthy.nonfinite).status == D.PASS
    always = short_run(prices_csv, lr=1e-2, clip=0.01)
    assert D.check_exploding(always.norms, 0.01, always.nonfinite).status == D.WARN


def test_vanishing_flags_a_small_weight_rnn_over_a_long_window():
    torch.manual_seed(0)
    x, y = torch.randn(16, 200, 3), torch.randn(16, 1)
    broken = StackedRNN(3, 1, cell="gru", init="pytorch", hidden_sizes=16)
    with torch.no_grad():
        for p in broken.layers.parameters():
            p.mul_(0.3)  # small recurrent weights: each step shrinks the gradient
    ratio = gradient_flow(broken, x, y)
    assert D.check_vanishing(float(ratio[0] / ratio[-1]), None).status == D.FAIL
    healthy = gradient_flow(StackedRNN(3, 1, hidden_sizes=16), x[:, :20], y)
    assert D.check_vanishing(float(healthy[0] / healthy[-1]), 0.0).status == D.PASS


def test_init_flags_zero_forget_bias_with_long_windows_and_non_orthogonal_weights():
    zero = StackedRNN(3, 1, hidden_sizes=32, forget_bias=0.0)
    w, sizes, forget = D.recurrent_weights(zero)
    assert sizes == [32, 32] and forget == 0.0
    assert D.check_init(w, sizes, forget, window=200).status == D.WARN
    default = StackedRNN(3, 1, hidden_sizes=32, init="pytorch")
    assert D.check_init([default.layers[0].weight_hh_l0], 32, None, window=20).status == D.WARN
    healthy = StackedRNN(3, 1, hidden_sizes=[32, 16])  # per-layer sizes: blocks split by each layer's size
    w, sizes, forget = D.recurrent_weights(healthy)
    assert sizes == [32, 16] and forget == 1.0
    assert D.check_init(w, sizes, forget, window=200).status == D.PASS


def test_scaling_flags_unscaled_inputs(prices_csv):
    columns = {c: c for c in ("open", "high", "low", "close", "volume")}
    raw = PriceDataModule(**dm_kwargs(prices_csv, features=["log_return", "volume"], columns=columns, scaler="none"))
    raw.setup("fit")
    x = raw.dataset("train").__getitems__(list(range(100)))["x"][:, -1]
    check = D.check_scaling(x, raw.features, raw.scaler, raw_scale=[0.01, 3e5])  # std of returns vs volume
    assert check.status == D.FAIL and "data.scaler: standard" in check.advice
    scaled = PriceDataModule(**dm_kwargs(prices_csv))
    scaled.setup("fit")
    x = scaled.dataset("train").__getitems__(list(range(len(scaled.dataset("train")))))["x"][:, -1]
    assert D.check_scaling(x, scaled.features, "standard", scaled.stats["scale"][0]).status == D.PASS


def test_learning_rate_flags_rising_and_flat_losses():
    assert D.check_learning_rate([1.0, 1.2, 1.5, 2.0, 4.0], 1.0, None).status == D.FAIL
    assert D.check_learning_rate([1.0, 1.0, 0.99, 1.0, 1.0], 1e-7, None).status == D.WARN
    assert D.check_learning_rate([1.0, 0.8, 0.6, 0.5, 0.4], 1e-3, 1e-3).status == D.PASS
    assert D.check_learning_rate([1.0, 0.8, 0.6, 0.5, 0.4], 1.0, 1e-3).status == D.WARN  # 1000x lr_find's
    assert D.check_learning_rate([1.0, 0.8, 0.6, 0.5, 0.4], 1e-3, 1e-4).status == D.PASS  # falls: close enough


def test_suggested_lr_is_the_steepest_fall_per_decade_after_the_warm_up_peak():
    # The shape lr_find gave on the bundled data: the smoothed loss rises from its first point to a
    # warm-up peak at ~4e-6, falls fastest around 3e-4 (per decade), is lowest at 0.1, then diverges.
    lrs = np.logspace(-6, 0, 100)
    x = np.log10(lrs)
    fall = 0.45 / (1 + np.exp(-(x + 3.5) * 2.0))  # steepest at log10(lr) = -3.5
    loss = 0.97 - fall + 0.3 * np.clip(x + 1, 0, None) ** 2 - 0.5 * np.exp(-(((x + 6) / 0.25) ** 2))
    finder = SimpleNamespace(results={"lr": lrs.tolist(), "loss": loss.tolist()})
    suggestion, at_min = D.suggested_lr(finder)
    assert 10**-3.8 < suggestion < 10**-3.2  # Lightning 2.6's own finder.suggestion() picks ~5e-6 here
    assert 10**-1.3 < at_min < 10**-0.7
    flat = SimpleNamespace(results={"lr": lrs.tolist(), "loss": (1 + 0.1 * np.clip(x + 2, 0, None)).tolist()})
    assert D.suggested_lr(flat)[0] is None  # never falls: no suggestion


def test_sequence_length_flags_a_window_longer_than_gradient_memory():
    decaying = torch.tensor([0.9**k for k in range(200)]).flip(0)  # 0.9**66 < 1e-3: dies 66 steps back
    check = D.check_sequence_length(decaying, 200, tbptt=None)
    assert check.status == D.WARN and "tbptt_steps: 66" in check.advice
    assert D.check_sequence_length(torch.ones(50), 50, tbptt=None).status == D.PASS


def test_baselines_flag_copying_and_losing():
    assert D.check_baselines({"naive": 0.0, "mean": -0.2}, corr_with_last=0.99).status == D.FAIL
    assert D.check_baselines({"naive": -0.1, "mean": -0.2}, corr_with_last=0.3).status == D.WARN
    assert D.check_baselines({"naive": 0.3, "har": 0.01}, corr_with_last=0.7).status == D.PASS


@pytest.fixture
def one_batch(prices_csv):
    dm = PriceDataModule(**dm_kwargs(prices_csv))
    dm.setup("fit")
    return dm.dataset("train").__getitems__(list(range(0, 320, 5)))  # 64 windows


@pytest.mark.parametrize("broken", ["healthy", "frozen", "lr"])
def test_overfit_one_batch_flags_frozen_parameters_and_a_far_off_learning_rate(one_batch, broken):
    lr = 1e-7 if broken == "lr" else 1e-3
    torch.manual_seed(0)
    model = Forecaster(n_features=3, optimizer=lambda p: torch.optim.Adam(p, lr=lr))
    if broken == "frozen":  # e.g. a backbone left frozen after fine-tuning code
        model.net.layers.requires_grad_(False)
    first, last = D.overfit_one_batch(model, one_batch, steps=200)
    check = D.check_overfit(first, last, 200)
    assert check.status == (D.PASS if broken == "healthy" else D.FAIL)


def test_copying_flags_persistence_and_flat_forecasts():
    assert D.check_copying(1, 0.99, 0.99, 0.9).status == D.FAIL
    assert D.check_copying(0, 0.6, 0.4, 0.03).status == D.WARN
    assert D.check_copying(0, 0.6, 0.4, 0.7).status == D.PASS


def test_target_flags_price_levels():
    assert D.check_target("close").status == D.FAIL
    assert D.check_target("gk_log_var").status == D.PASS


def test_diagnose_subcommand_prints_and_saves_the_report(cli_args, tmp_path, capsys):
    main(cli_args("diagnose", "configs/volatility.yaml", "--steps", "20", "--lr_find", "false"))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert len(lines) == 10 and all(line[1:5] in ("PASS", "WARN", "FAIL") for line in lines)
    assert lines[0].split("] ")[1].startswith("0. overfit one batch")  # reported before anything else
    assert "8. target choice" in out and "days covered: scaler" in out
    saved = next((tmp_path / "logs").rglob("diagnose.txt")).read_text()
    assert saved.splitlines()[0] == lines[0]


@pytest.mark.slow
def test_diagnose_flags_a_price_level_target_end_to_end(cli_args, tmp_path, capsys):
    L.seed_everything(0)
    columns = "{open: open, high: high, low: low, close: close, volume: volume}"
    extra = ["--steps", "20", "--data.init_args.target", "close", "--data.init_args.columns", columns]
    main(cli_args("diagnose", "configs/volatility.yaml", *extra))
    out = capsys.readouterr().out
    assert "[FAIL] 8. target choice: target 'close' is a price level" in out
    assert "lr_find suggests" in out


def test_diagnose_prints_a_report_without_avoidable_warnings(cli_args, tmp_path, monkeypatch, capsys, caplog, recwarn):
    from forecasting.cli import main

    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO"):
        main(cli_args("diagnose", "configs/volatility.yaml", "--steps", "20"))
    assert "PASS" in capsys.readouterr().out
    noise = ("weights_only", "max_epochs", "requires_grad=True to a scalar")
    assert not [r.getMessage() for r in caplog.records if any(n in r.getMessage() for n in noise)]
    assert not [str(w.message) for w in recwarn if any(n in str(w.message) for n in noise)]
    assert not list(tmp_path.glob(".lr_find*"))  # lr_find's temporary checkpoint is not left in the cwd
