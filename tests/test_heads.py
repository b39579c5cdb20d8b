"""Distribution heads (model.head): losses by hand, non-crossing quantiles, scaling undone, both
training modes, and a Gaussian head that learns a GARCH process's conditional distribution."""

import math

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from forecasting.cli import main
from forecasting.models import heads
from forecasting.models.forecaster import Forecaster
from tests.nets import lstm

WINDOW = 20


def test_quantiles_never_cross_whatever_the_network_emits():
    head = heads.build("quantiles", None, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99], 1e-3)
    g = torch.Generator().manual_seed(0)
    for spread in (0.1, 10.0, 1000.0):  # tiny to huge raw outputs, any sign
        raw = torch.randn(500, 6, 3 * 7, generator=g) * spread
        q = head(raw)
        assert q.shape == (500, 6, 3, 7)
        assert torch.all(q[..., 1:] >= q[..., :-1])
        # undoing the target scaling keeps the order (scales are positive)
        q_orig = head.to_original(q[:, -1], torch.full((500, 1), 3.0), torch.full((500, 1), 0.5))
        assert torch.all(q_orig[..., 1:] >= q_orig[..., :-1])
        torch.testing.assert_close(q_orig, q[:, -1] * 0.5 + 3.0)


def test_pinball_and_gaussian_nll_match_hand_computations():
    tau = torch.tensor([0.1, 0.5, 0.9])
    q = torch.tensor([[-1.0, 0.0, 2.0]])
    y = torch.tensor([1.0])
    # y - q = (2, 1, -1): 0.1 * 2, 0.5 * 1, (0.9 - 1) * -1
    torch.testing.assert_close(heads.pinball(q, y, tau), torch.tensor([[0.2, 0.5, 0.1]]))
    head = heads.build("gaussian", None, None, 1e-3)
    params = torch.tensor([[[0.5, 2.0]]])  # loc 0.5, scale 2 at y = 1.5: z = 0.5
    expected = math.log(2.0) + 0.5 * 0.25 + 0.5 * math.log(2 * math.pi)
    assert head.nll(params, torch.tensor([[1.5]])).item() == pytest.approx(expected, rel=1e-6)
    t = heads.build("student_t", None, None, 1e-3)
    p = torch.tensor([[[0.5, 2.0, 5.0]]])
    from scipy import stats

    assert t.nll(p, torch.tensor([[1.5]])).item() == pytest.approx(-stats.t.logpdf(1.5, 5.0, 0.5, 2.0), rel=1e-5)
    # the scale floor: a network pushing the scale to -inf still gives min_scale, so a finite NLL
    floor = heads.build("gaussian", None, None, 0.01)(torch.tensor([[0.0, -1e4]]))
    assert floor[0, 0, 1].item() == pytest.approx(0.01)


def test_scaling_is_undone_for_location_and_scale():
    head = heads.build("student_t", None, None, 1e-3)
    params = torch.tensor([[[0.5, 2.0, 5.0]]])
    orig = head.to_original(params, torch.tensor([[10.0]]), torch.tensor([[3.0]]))
    torch.testing.assert_close(orig, torch.tensor([[[11.5, 6.0, 5.0]]]))  # df has no units


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--model.head", "bogus"], "model.head: unknown head 'bogus'"),
        (["--model.head", "quantiles", "--model.quantiles", "[0.5, 0.1]"], "model.quantiles: [0.5, 0.1]"),
        (["--model.head", "quantiles", "--model.quantiles", "[0.0, 0.5]"], "strictly between 0 and 1"),
        (["--model.head", "gaussian", "--model.min_scale", "0"], "model.min_scale: must be > 0"),
    ],
)
def test_bad_head_config_is_one_line_and_writes_nothing(cli_args, tmp_path, capsys, extra, expected):
    with pytest.raises(SystemExit) as exit_:
        main(cli_args("fit", "configs/volatility.yaml", *extra))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "logs").exists()


def batches(n=3, dense=False):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(16, WINDOW, 2, generator=g)
        y = x[..., :1] * 0.5 + 0.3 * torch.randn(16, WINDOW, 1, generator=g)  # learnable, with noise
        out.append({"x": x, "y": y if dense else y[:, -1], "y_loc": torch.zeros(16, 1),
                    "y_scale": torch.ones(16, 1), "row": torch.arange(16)})  # fmt: skip
    return out


@pytest.mark.parametrize("head", ["gaussian", "student_t", "quantiles"])
@pytest.mark.parametrize("tbptt_steps", [None, 5])
def test_every_head_trains_in_both_modes_with_clipping(head, tbptt_steps):
    torch.manual_seed(0)
    model = Forecaster(n_features=2, head=head, net=lstm(hidden_sizes=8, dropout=0.0), tbptt_steps=tbptt_steps,
                       burn_in=4, gradient_clip_val=0.5, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))  # fmt: skip
    data = batches(dense=tbptt_steps is not None)
    before = model.output_loss(model.net(data[0]["x"])[0][:, -1], data[0]["y"][:, -1] if tbptt_steps else data[0]["y"])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_epochs=15)  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=None))
    y = data[0]["y"][:, -1] if tbptt_steps else data[0]["y"]
    after = model.output_loss(model.net(data[0]["x"])[0][:, -1], y)
    assert torch.isfinite(after) and after < before - 0.1
    assert model.forward(data[0]["x"]).shape == (16, 1) and model.distribution(data[0]["x"]).shape[:2] == (16, 1)


def simulate_garch(n, seed, omega=0.1, alpha=0.2, beta=0.6):
    """Returns with a known conditional distribution: r_t ~ N(0, v_t), v_t = omega + alpha r_{t-1}^2 + beta v_{t-1}."""
    rng = np.random.default_rng(seed)
    r, v = np.empty(n), np.empty(n)
    v[0] = omega / (1 - alpha - beta)
    for t in range(n):
        if t:
            v[t] = omega + alpha * r[t - 1] ** 2 + beta * v[t - 1]
        r[t] = math.sqrt(v[t]) * rng.standard_normal()
    return r, v


def garch_windows(r, v):
    """Inputs r and r^2 over the last WINDOW days; target the next return and its true variance."""
    x = np.stack([r, r**2], -1).astype(np.float32)
    ends = np.arange(WINDOW - 1, len(r) - 1)
    windows = np.stack([x[e - WINDOW + 1 : e + 1] for e in ends])
    return torch.from_numpy(windows), torch.tensor(r[ends + 1, None], dtype=torch.float32), v[ends + 1]


def test_gaussian_head_learns_a_garch_conditional_distribution():
    torch.manual_seed(0)
    x, y, _ = garch_windows(*simulate_garch(6000, seed=0))
    x_test, y_test, v_test = garch_windows(*simulate_garch(20000, seed=1))
    model = Forecaster(n_features=2, head="gaussian", net=lstm(hidden_sizes=16, num_layers=1, dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        idx = torch.randint(len(x), (256,), generator=g)
        loss = model.head.loss(model.distribution(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        params = model.distribution(x_test)
    nll = model.head.nll(params, y_test).mean().item()
    actual = y_test[:, 0].numpy()
    true_nll = float(np.mean(0.5 * np.log(2 * np.pi * v_test) + 0.5 * actual**2 / v_test))
    flat = actual.var()  # one variance for all days: what ignoring the heteroscedasticity costs
    flat_nll = float(np.mean(0.5 * np.log(2 * np.pi * flat) + 0.5 * actual**2 / flat))
    assert nll - true_nll < 0.015  # within 0.015 nats of the true model (measured: 0.005)
    assert flat_nll - true_nll > 0.03  # what one flat variance costs (measured: 0.043): the margin is far smaller
    z90 = 1.6448536
    coverage = ((y_test - params[..., 0]).abs() <= z90 * params[..., 1]).float().mean().item()
    assert 0.87 <= coverage <= 0.93  # 20,000 test days: standard error 0.002
