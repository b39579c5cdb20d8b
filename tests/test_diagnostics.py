"""TensorBoard diagnostics (forecasting/callbacks): read back from the event files of real tiny runs."""

import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader

from forecasting.callbacks.forecast_plot import ForecastPlot
from forecasting.callbacks.gate_saturation import GateSaturation, lstm_gates, network_gates, saturated
from forecasting.callbacks.grad_flow import GradientFlow, gradient_flow
from forecasting.callbacks.grad_histograms import GradientHistograms
from forecasting.callbacks.grad_norms import GradientNorms
from forecasting.callbacks.hparams import HParamsMetric
from forecasting.callbacks.nonfinite_guard import NonFiniteGuard, first_nonfinite
from forecasting.cli import main
from forecasting.data.datamodule import PriceDataModule
from forecasting.errors import ForecastingError
from forecasting.models.forecaster import Forecaster
from forecasting.models.lstm import StackedRNN
from tests.conftest import dm_kwargs, make_prices
from tests.nets import lstm

WINDOW, FEATURES, B = 16, 3, 8


def batches(n=3, dense=True, seed=0, nan_at=None):
    """Plain dict batches; `nan_at=(batch, step)` puts a NaN into one input."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = torch.randn(B, WINDOW, FEATURES, generator=g)
        if nan_at is not None and nan_at[0] == i:
            x[0, nan_at[1], 0] = float("nan")
        y = torch.randn(B, WINDOW, 1, generator=g) if dense else torch.randn(B, 1, generator=g)
        loc, scale, row = torch.full((B, 1), 2.0), torch.full((B, 1), 3.0), torch.arange(B) + B * i
        out.append({"x": x, "y": y, "y_loc": loc, "y_scale": scale, "row": row})
    return out


NET_KEYS = ("hidden_sizes", "num_layers", "dropout", "cell", "init", "forget_bias")


def model(cls=Forecaster, **kwargs) -> Forecaster:
    torch.manual_seed(0)
    net = {"hidden_sizes": 8, "dropout": 0.0, **{k: kwargs.pop(k) for k in NET_KEYS if k in kwargs}}
    defaults = dict(n_features=FEATURES, net=lstm(**net), burn_in=4, dense_loss=True)
    return cls(**{**defaults, **kwargs})


class RecordPostClip(Forecaster):
    """Records the total gradient norm the optimiser really gets, after the module clipped."""

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.post_clip = getattr(self, "post_clip", [])
        self.post_clip.append(float(torch.cat([p.grad.flatten() for p in self.parameters()]).norm()))


def fit(module, tmp_path, callbacks, train=None, val=None, **kwargs) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="run", default_hp_metric=False), callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=1, log_every_n_steps=1, **{"max_epochs": 1, **kwargs},
    )  # fmt: skip
    val = DataLoader(val or batches(1, dense=False, seed=1), batch_size=None)
    trainer.fit(module, DataLoader(train or batches(), batch_size=None), val)
    return trainer


def events(trainer) -> EventAccumulator:
    guidance = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}  # 0: keep every event
    return EventAccumulator(trainer.logger.log_dir, size_guidance=guidance).Reload()


def scalars(ea, tag) -> dict[int, float]:
    return {e.step: e.value for e in ea.Scalars(tag)}


@pytest.mark.parametrize("tbptt_steps", [None, 8], ids=["full_bptt", "tbptt"])
def test_every_diagnostic_is_written_in_both_bptt_modes(tmp_path, tbptt_steps):
    net = model(RecordPostClip, tbptt_steps=tbptt_steps, gradient_clip_val=0.3)
    initial = {name: p.detach().clone().double() for name, p in net.named_parameters()}
    flow = GradientFlow()
    callbacks = [NonFiniteGuard(), GradientNorms(1), GradientHistograms(2), flow, GateSaturation(), ForecastPlot()]
    trainer = fit(net, tmp_path, [*callbacks, HParamsMetric()])
    steps = 3 * (1 if tbptt_steps is None else 2)  # 3 batches; truncated: 2 chunks of 8 each
    assert trainer.global_step == steps
    ea = events(trainer)
    tags = ea.Tags()

    names = [name for name, p in net.named_parameters() if p.requires_grad]
    assert len(names) == 10  # 2 LSTM layers x 4 tensors + head weight and bias
    for name in names:
        for kind in ("grad", "weight"):
            assert [e.step for e in ea.Histograms(f"{kind}/{name}")] == list(range(0, steps, 2))
        first = ea.Histograms(f"weight/{name}")[0].histogram_value  # step 0: the initial weights
        w = initial[name]
        assert (first.num, first.min, first.max) == (w.numel(), float(w.min()), float(w.max()))
        assert first.sum == pytest.approx(float(w.sum()), abs=1e-9) and sum(first.bucket) == w.numel()

    pre, post = scalars(ea, "grad_norm/total_pre_clip"), scalars(ea, "grad_norm/total_post_clip")
    assert sorted(pre) == sorted(post) == list(range(steps))  # every optimiser step, in both modes
    assert [post[s] for s in range(steps)] == pytest.approx(net.post_clip, rel=1e-5)  # what the optimiser got
    assert scalars(ea, "grad_norm/clip_fraction") == {s: float(n > 0.3) for s, n in pre.items()}
    assert 0 < sum(n > 0.3 for n in pre.values()) < steps  # clipped on some steps, not on others
    layers = [f"layers.{k}_{w}_to_hidden" for k in (0, 1) for w in ("input", "hidden")] + ["head"]
    # per-layer norms add up (in squares) to the total
    per_layer = [scalars(ea, f"grad_norm/{layer}") for layer in layers]
    for step, norm in pre.items():
        assert math.sqrt(sum(layer[step] ** 2 for layer in per_layer)) == pytest.approx(norm, rel=1e-5)

    # gradient flow and gates: on the sanity-check batch (step 0) and after the epoch's validation
    ratio = scalars(ea, "grad_flow/first_to_last")
    assert sorted(ratio) == [0, steps]
    net.eval()
    norms = gradient_flow(net.net, flow.batch["x"], flow.batch["y"]).double()
    assert ratio[steps] == pytest.approx(float(norms[0] / norms[-1]), rel=1e-5)
    assert 0.05 < ratio[steps] < 20  # orthogonal LSTM, forget bias 1, 16 steps: no vanishing
    assert 0 <= scalars(ea, "gates/forget_saturated")[steps] < 0.5
    assert 0 <= scalars(ea, "gates/input_saturated")[steps] < 0.5
    assert {"grad_flow/per_step", "forecast/val"} <= set(tags["images"])
    assert len(ea.Images("forecast/val")) == 1  # not on the sanity check

    hp = scalars(ea, "hp_metric")
    assert list(hp.values()) == [pytest.approx(float(trainer.callback_metrics["val/loss"]))]


@pytest.mark.parametrize(
    "where, algorithm, clip, fraction",
    [
        ("model", "norm", 1e-6, 1.0),
        ("model", "norm", 1e6, 0.0),
        ("model", "value", 1e-6, 1.0),
        ("trainer", "value", 1e-6, 1.0),
    ],
)
def test_clip_fraction(tmp_path, where, algorithm, clip, fraction):
    if where == "model":
        net, kwargs = model(gradient_clip_val=clip, gradient_clip_algorithm=algorithm), {}
    else:  # Lightning's own clipping (full BPTT only) is read too
        net, kwargs = model(gradient_clip_val=None), dict(gradient_clip_val=clip, gradient_clip_algorithm=algorithm)
    ea = events(fit(net, tmp_path, [GradientNorms(every_n_steps=3)], **kwargs))
    assert scalars(ea, "grad_norm/clip_fraction") == {2: fraction}  # one interval of 3 steps
    pre, post = scalars(ea, "grad_norm/total_pre_clip")[2], scalars(ea, "grad_norm/total_post_clip")[2]
    assert pre > 1e-3
    if clip > 1:
        assert post == pre
    elif algorithm == "norm":
        assert post == pytest.approx(clip, rel=1e-6)
    else:  # every element clamped to +-1e-6: the norm is at most 1e-6 * sqrt(number of elements)
        assert 0 < post <= clip * math.sqrt(sum(p.numel() for p in net.parameters())) * (1 + 1e-6)


class RecordNorms(L.Callback):
    """Pre-clip total gradient norm of every step, computed independently of GradientNorms."""

    def __init__(self):
        self.norms = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.norms.append(float(torch.cat([p.grad.flatten() for p in pl_module.parameters()]).norm()))


def test_clip_fraction_is_the_share_of_clipped_steps_in_the_interval(tmp_path):
    record = RecordNorms()
    ea = events(fit(model(gradient_clip_val=0.4), tmp_path, [record, GradientNorms(6)], train=batches(12)))
    expected = [sum(n > 0.4 for n in record.norms[i : i + 6]) / 6 for i in (0, 6)]
    assert 0 < expected[0] < 1 or 0 < expected[1] < 1  # some steps clip, others do not
    assert scalars(ea, "grad_norm/clip_fraction") == {5: pytest.approx(expected[0]), 11: pytest.approx(expected[1])}
    assert scalars(ea, "grad_norm/max_pre_clip")[11] == pytest.approx(max(record.norms[6:]), rel=1e-5)
    assert scalars(ea, "grad_norm/total_pre_clip")[11] == pytest.approx(record.norms[11], rel=1e-5)


class LinearRecurrence(nn.Module):
    """h_t = a h_{t-1} + x_t, forecast h_t: dL/dx_t = a^(T-1-t) dL/dh_T, so first/last = a^(T-1)."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def forward(self, x, state=None):
        h, outs = torch.zeros_like(x[:, 0]), []
        for t in range(x.shape[1]):
            h = self.a * h + x[:, t]
            outs.append(h)
        return torch.stack(outs, 1), h


class VanillaRNN(nn.Module):
    def __init__(self, weight_scale: float):
        super().__init__()
        torch.manual_seed(0)
        self.rnn, self.head = nn.RNN(FEATURES, 16, batch_first=True), nn.Linear(16, 1)
        with torch.no_grad():
            for p in self.rnn.parameters():
                p.mul_(weight_scale)

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return self.head(out), state


@pytest.mark.parametrize("a", [0.8, 1.0, 1.1])
def test_gradient_flow_of_a_known_recurrence(a):
    x, y = torch.randn(B, 32, 1), torch.randn(B, 1)
    norms = gradient_flow(LinearRecurrence(a), x, y)
    assert norms.shape == (32,)
    assert float(norms[0] / norms[-1]) == pytest.approx(a**31, rel=1e-4)


def test_gradient_flow_measures_without_dropout_and_restores_the_modes():
    torch.manual_seed(0)
    net = StackedRNN(3, 1, hidden_sizes=8, num_layers=2, dropout=0.5)
    net.layers.append(nn.LSTM(8, 8, num_layers=2, dropout=0.5, batch_first=True))  # an RNN's own dropout too
    net.head = nn.Linear(8, 1)
    net.eval()
    x, y = torch.randn(4, 10, 3), torch.randn(4, 1)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.MSELoss()(net(xr)[0][:, -1], y), xr)  # eval mode: no dropout
    torch.testing.assert_close(gradient_flow(net, x, y), torch.linalg.vector_norm(grad, dim=(0, 2)))
    assert not net.layers[2].training and net.layers[2].dropout == 0.5 and not net.dropout.training
    net.train()
    torch.manual_seed(1)
    assert not torch.allclose(gradient_flow(net, x, y), torch.linalg.vector_norm(grad, dim=(0, 2)))  # train mode: nn.Dropout on
    net.dropout.p = 0.0
    torch.testing.assert_close(gradient_flow(net, x, y), torch.linalg.vector_norm(grad, dim=(0, 2)))  # the RNN's own: off
    assert net.layers[2].training and net.layers[2].dropout == 0.5


def test_gradient_flow_vanishes_through_a_small_vanilla_rnn_but_not_an_orthogonal_lstm():
    x, y = torch.randn(B, 32, FEATURES), torch.randn(B, 1)
    norms = gradient_flow(VanillaRNN(weight_scale=0.5), x, y)
    assert float(norms[0] / norms[-1]) < 1e-6  # orders of magnitude below one
    assert torch.all(norms[:-1] <= norms[1:] * 1.5)  # and it shrinks step by step, going back
    lstm = model().net.eval()
    assert float(gradient_flow(lstm, x, y)[0] / gradient_flow(lstm, x, y)[-1]) > 0.05


def test_gates_match_the_lstm_equations_and_a_huge_forget_bias_saturates():
    torch.manual_seed(0)
    rnn, x = nn.LSTM(FEATURES, 8, num_layers=2, batch_first=True).eval(), torch.randn(B, WINDOW, FEATURES)
    gates, out = lstm_gates(rnn, x)
    torch.testing.assert_close(out, rnn(x)[0], atol=1e-5, rtol=0)  # the layers are stacked as in PyTorch
    assert [tuple(g.shape) for pair in gates for g in pair] == [(B, WINDOW, 8)] * 4
    h = c = torch.zeros(B, 8)
    for t in range(4):  # layer 0 by hand, step by step
        pre = x[:, t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
        i, f, g, o = pre.chunk(4, dim=1)
        torch.testing.assert_close(gates[0][0][:, t], i.sigmoid())
        torch.testing.assert_close(gates[0][1][:, t], f.sigmoid())
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
    assert saturated(torch.stack([f for _, f in gates])) < 0.05
    shut = model(hidden_sizes=[8, 4], forget_bias=20.0).net.eval()  # forget gate pinned at ~1
    gates = network_gates(shut, x)  # found inside the network, one entry per layer, each its own size
    assert {k: tuple(f.shape) for k, (_, f) in gates.items()} == {"layers.0": (B, WINDOW, 8), "layers.1": (B, WINDOW, 4)}
    assert all(saturated(f) == 1.0 and saturated(i) < 0.05 for i, f in gates.values())


def test_gates_from_a_recorded_forward_equal_those_of_a_second_run():
    # network_gates takes a one-layer LSTM's hidden states from the forward pass it records;
    # lstm_gates without them runs the layer again: the two must agree.
    torch.manual_seed(1)
    net, x = model(hidden_sizes=[8, 4]).net.eval(), torch.randn(B, WINDOW, FEATURES)
    recorded = network_gates(net, x)
    inputs = [x, net.layers[0](x)[0]]  # what each layer receives (dropout is off in eval mode)
    for k, name in enumerate(["layers.0", "layers.1"]):
        ((i, f),), _ = lstm_gates(net.layers[k], inputs[k])
        torch.testing.assert_close(recorded[name][0], i, rtol=0, atol=1e-6)
        torch.testing.assert_close(recorded[name][1], f, rtol=0, atol=1e-6)


def test_first_nonfinite_names_the_tensor_and_what_is_wrong():
    ok, big = torch.ones(3), torch.full((4,), 3e38)  # each value finite, the norm overflows float32
    assert first_nonfinite([("a", ok), ("b", None), ("c", 2 * ok)]) is None
    assert first_nonfinite([("a", ok), ("b", torch.tensor([1.0, math.nan]))]) == ("b", "nan")
    assert first_nonfinite([("a", torch.tensor([-math.inf])), ("b", torch.tensor([math.nan]))]) == ("a", "inf")
    assert first_nonfinite([("a", ok), ("b", big)]) == ("b", "so large that the norm overflows")
    assert first_nonfinite([]) is None


@pytest.mark.parametrize("tbptt_steps, nan_at, step", [(None, (2, 10), 2), (8, (1, 12), 3)], ids=["full", "tbptt"])
def test_guard_stops_at_the_step_with_a_nan_before_applying_it(tmp_path, tbptt_steps, nan_at, step):
    # tbptt: batch 0 makes steps 0-1, batch 1 chunk 0 step 2; input 12 lies in batch 1's chunk 1, step 3
    net = model(tbptt_steps=tbptt_steps, gradient_clip_val=1.0)
    with pytest.raises(ForecastingError) as err:
        fit(net, tmp_path, [NonFiniteGuard()], train=batches(4, nan_at=nan_at), max_epochs=2)
    message = str(err.value)
    assert f"training stopped at global_step {step} (epoch 0): the gradient of net.layers." in message
    assert "is nan before the update was applied" in message and "learning rate" in message
    assert "\n" not in message
    assert all(torch.isfinite(p).all() for p in net.parameters())  # the bad update never happened


def test_guard_stops_a_diverging_run_and_the_checkpoint_stays_finite(tmp_path):
    sgd = lambda p: torch.optim.SGD(p, lr=1e6)  # noqa: E731
    net = model(gradient_clip_val=None, optimizer=sgd)
    checkpoint = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, callbacks=[NonFiniteGuard(), checkpoint], enable_progress_bar=False,
        enable_model_summary=False, max_epochs=1,
    )  # fmt: skip
    with pytest.raises(ForecastingError, match="learning rate") as err:
        trainer.fit(net, DataLoader(batches(30), batch_size=None), DataLoader(batches(1), batch_size=None))
    assert 0 < trainer.global_step < 30
    assert f"global_step {trainer.global_step} " in str(err.value)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert 0 < saved["global_step"] <= trainer.global_step
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    restored = Forecaster.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", optimizer=sgd)
    assert torch.isfinite(restored(batches(1)[0]["x"])).all()


def test_guard_through_the_cli_prints_one_line(cli_args, capsys):
    args = cli_args(
        "fit", "configs/volatility.yaml", "--trainer.callbacks+=forecasting.callbacks.nonfinite_guard.NonFiniteGuard",
        "--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=1e6", "--model.gradient_clip_val=null",
        "--model.lr_scheduler=null", "--trainer.limit_train_batches=20",
    )  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    # (Lightning may print its own deprecation warnings first; the error is one line, with no traceback)
    assert err[-1].startswith("error: training stopped at global_step ") and "Traceback" not in "\n".join(err)


def test_forecast_plot_draws_one_ticker_in_original_units(tmp_path):
    path = tmp_path / "prices.csv"
    make_prices(n_days=160).to_csv(path, index=False)
    dm = PriceDataModule(**dm_kwargs(path))
    plot = ForecastPlot()
    net = Forecaster(n_features=dm.n_features, net=lstm(hidden_sizes=8))
    trainer = L.Trainer(
        accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="run"), callbacks=[plot], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, max_epochs=1, limit_train_batches=2, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(net, datamodule=dm)
    drawn, frame = plot.drawn, dm.frames["fit"]

    def windows_of_aaa(split):
        return [r for r in dm.dataset(split).ends.tolist() if frame["ticker"].iat[r] == "AAA"]

    # every AAA validation window, in date order, with the next day's log variance as the actual value
    assert drawn["ticker"] == "AAA" and list(drawn["rows"]) == windows_of_aaa("val")
    assert list(drawn["x"]) == sorted(drawn["x"]) and list(drawn["x"]) == list(frame["time"].dt.date[drawn["rows"]])
    np.testing.assert_allclose(drawn["actual"], frame["f:gk_log_var"].to_numpy()[drawn["rows"] + 1], rtol=1e-5)
    assert -16 < drawn["forecast"].mean() < -4  # original units (log daily variance), not scaled ones
    val = dm.dataset("val")
    windows = val.__getitems__(np.searchsorted(val.ends.numpy(), drawn["rows"]).tolist())
    with torch.no_grad():
        expected = net.eval()(windows["x"]) * windows["y_scale"] + windows["y_loc"]
    np.testing.assert_allclose(drawn["forecast"], expected[:, 0].numpy(), rtol=1e-5)  # the model's own forecasts
    trainer.test(net, datamodule=dm)
    assert list(plot.drawn["rows"]) == windows_of_aaa("test")
    assert {"forecast/val", "forecast/test"} <= set(events(trainer).Tags()["images"])


def test_diagnostics_without_tensorboard_skip_figures_but_log_scalars(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    callbacks = [GradientNorms(1), GradientHistograms(1), GradientFlow(), GateSaturation(), ForecastPlot()]
    trainer = L.Trainer(
        accelerator="cpu",
        logger=CSVLogger(tmp_path), callbacks=[*callbacks, HParamsMetric()], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, max_epochs=1, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(model(), DataLoader(batches(), batch_size=None), DataLoader(batches(1, dense=False), batch_size=None))
    header = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"grad_norm/total_pre_clip", "grad_flow/first_to_last", "gates/forget_saturated", "hp_metric"} <= set(header)


class NanOnRankOne(L.Callback):
    """Puts a NaN into rank 1's input at optimiser step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step == self.step:
            batch["x"][0, 0, 0] = float("nan")  # in the batch's first chunk: its first step


class RecordingGuard(NonFiniteGuard):
    """Writes the message each rank raises to <out>/rank<r>.txt (spawned processes' errors do not come back)."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def _stop(self, trainer, *args):
        try:
            super()._stop(trainer, *args)
        except ForecastingError as err:
            (self.out / f"rank{trainer.global_rank}.txt").write_text(str(err))
            raise


@pytest.mark.slow
def test_under_ddp_rank_zero_writes_and_every_rank_stops_together(tmp_path):
    path = tmp_path / "prices.csv"
    make_prices(n_days=100).to_csv(path, index=False)
    dm = PriceDataModule(**dm_kwargs(path, batch_size=8, dense_targets=True))
    net = Forecaster(n_features=dm.n_features, net=lstm(hidden_sizes=8), tbptt_steps=8, burn_in=4)
    callbacks = [RecordingGuard(tmp_path), GradientNorms(1), GradientHistograms(4), GradientFlow(), GateSaturation()]
    callbacks += [ForecastPlot(), NanOnRankOne(step=20)]
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=DDPStrategy(start_method="spawn", process_group_backend="gloo"),
        logger=TensorBoardLogger(tmp_path, name="run"), callbacks=callbacks,
        max_epochs=3, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    # 84 windows, 8 per rank and batch: 6 batches x 2 chunks = 12 steps per epoch; the NaN comes in epoch 1
    with pytest.raises(Exception, match="training stopped at global_step 20"):
        trainer.fit(net, datamodule=dm)
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert all(m.startswith("training stopped at global_step 20 (epoch 1): the gradient of net.") for m in messages)
    run = tmp_path / "run" / "version_0"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # rank zero's only
    ea = EventAccumulator(str(run), size_guidance={"scalars": 0, "histograms": 0, "images": 0}).Reload()
    assert sorted(scalars(ea, "grad_norm/total_pre_clip")) == list(range(20))
    assert sorted(scalars(ea, "grad_flow/first_to_last")) == [0, 12]  # sanity check and epoch 0
    assert "gates/forget_saturated" in ea.Tags()["scalars"]
    assert {"grad/net.head.weight", "weight/net.layers.1.weight_hh_l0"} <= set(ea.Tags()["histograms"])
    assert {"grad_flow/per_step", "forecast/val"} <= set(ea.Tags()["images"])
