"""Truncated BPTT by manual optimisation: equivalence, real truncation, per-chunk clipping, schedulers."""

import copy
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from forecasting.cli import main
from forecasting.models.forecaster import Forecaster
from tests.nets import lstm

WINDOW, FEATURES = 24, 3


def batches(n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "x": torch.randn(8, WINDOW, FEATURES, generator=g),
            "y": torch.randn(8, WINDOW, 1, generator=g),  # dense: a target per step
            "y_loc": torch.zeros(8, 1),
            "y_scale": torch.ones(8, 1),
            "row": torch.arange(8),
        }
        for _ in range(n)
    ]


def model(**kwargs) -> Forecaster:
    torch.manual_seed(0)
    defaults = dict(n_features=FEATURES, net=lstm(hidden_sizes=16, dropout=0.0), burn_in=4, gradient_clip_val=None)
    defaults["optimizer"] = lambda p: torch.optim.SGD(p, lr=0.1)
    return Forecaster(**{**defaults, **kwargs})


def fit(module, data, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, **{"max_epochs": 1, **trainer_kwargs},
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=None))
    return trainer


def test_one_chunk_equals_full_bptt_after_one_step():
    full, truncated = model(dense_loss=True), model(tbptt_steps=WINDOW)
    before = copy.deepcopy(full.state_dict())
    fit(full, batches(), max_steps=1)
    fit(truncated, batches(), max_steps=1)
    for name, value in full.state_dict().items():
        torch.testing.assert_close(truncated.state_dict()[name], value, atol=1e-6, rtol=0)
    assert not torch.equal(before["net.layers.0.weight_hh_l0"], full.state_dict()["net.layers.0.weight_hh_l0"])


@pytest.mark.parametrize("k", [5, 8, 24])
def test_one_optimiser_step_per_chunk(k):
    trainer = fit(model(tbptt_steps=k), batches(3))
    assert trainer.global_step == 3 * math.ceil(WINDOW / k)


def test_no_gradient_reaches_an_earlier_chunk():
    net = model(tbptt_steps=8, burn_in=0)
    batch = batches()[0]
    x = batch["x"].clone().requires_grad_(True)
    losses = list(net.chunk_losses(x, batch["y"]))
    assert len(losses) == 3
    (grad,) = torch.autograd.grad(losses[1], x)
    per_step = grad.abs().sum(dim=(0, 2))
    assert torch.all(per_step[:8] == 0)  # chunk 1's inputs: exactly zero
    assert torch.all(per_step[8:16] > 0)  # chunk 2's own inputs: non-zero
    assert torch.all(per_step[16:] == 0)  # later inputs cannot matter
    # without the detach the earlier chunk would get a gradient: the state really is carried over
    whole, _ = net.net(x)
    (grad_full,) = torch.autograd.grad(net.loss_fn(whole[:, 8:16], batch["y"][:, 8:16]), x)
    assert grad_full[:, :8].abs().sum() > 0


class RecordNorms(Forecaster):
    """Records the total gradient norm just before each optimiser step, after clipping."""

    def on_before_optimizer_step(self, optimizer):
        pre = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.parameters() if p.grad is not None]))
        super().on_before_optimizer_step(optimizer)
        post = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.parameters() if p.grad is not None]))
        self.norms.append((pre.item(), post.item()))


@pytest.mark.parametrize("tbptt_steps", [None, 8])
def test_clipping_is_applied_on_every_step(tbptt_steps):
    torch.manual_seed(0)
    net = RecordNorms(
        n_features=FEATURES, net=lstm(hidden_sizes=16), tbptt_steps=tbptt_steps, dense_loss=True, burn_in=4, gradient_clip_val=1e-3
    )
    net.norms = []
    trainer = fit(net, batches(2))
    assert len(net.norms) == trainer.global_step == (2 if tbptt_steps is None else 6)
    assert all(pre > 1e-2 for pre, _ in net.norms)  # it had something to clip
    assert all(post <= 1e-3 * (1 + 1e-4) for _, post in net.norms)


def test_scheduler_advances_in_manual_mode_per_epoch_and_per_step():
    step_lr = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # noqa: E731
    net = model(tbptt_steps=8, lr_scheduler=step_lr)
    fit(net, batches(3), max_epochs=2)
    assert net.optimizers().param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)
    net = model(tbptt_steps=8, lr_scheduler=step_lr, scheduler_interval="step")
    fit(net, batches(3), max_epochs=2)
    assert net.optimizers().param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**6)  # per batch, not per chunk


@pytest.mark.parametrize("tbptt_steps", [None, 8])
def test_reduce_on_plateau_reads_its_monitor_in_both_modes(tbptt_steps):
    # threshold 1e9: no epoch ever counts as an improvement, so each epoch halves the LR
    plateau = lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=1e9)  # noqa: E731
    net = model(tbptt_steps=tbptt_steps, dense_loss=True, lr_scheduler=plateau, scheduler_monitor="train/loss")
    fit(net, batches(2), max_epochs=3)
    assert net.optimizers().param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_trainer_clip_with_tbptt_names_the_key_to_use(cli_args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(
            cli_args("fit", "configs/volatility.yaml", "--model.tbptt_steps", "8", "--trainer.gradient_clip_val", "0.5")
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set model.gradient_clip_val and model.gradient_clip_algorithm instead" in err[0]


def test_tbptt_cli_fit_resumes_and_predicts(cli_args, tmp_path):
    def args(subcommand, *extra):
        long = ["--data.init_args.window", "48", "--model.tbptt_steps", "16", "--model.burn_in", "8"]
        return cli_args(subcommand, "configs/volatility.yaml", *long, *extra, overlays=["configs/long_tbptt.yaml"])

    cli = main(args("fit"))
    run = tmp_path / "logs" / "volatility" / "version_0"
    assert cli.trainer.global_step == 5 * 3  # debug: 5 batches x ceil(48 / 16) chunks
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["hyper_parameters"]["tbptt_steps"] == 16
    resumed = main(args("fit", "--ckpt_path", str(last), "--trainer.max_epochs", "2"))
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 2 * 5 * 3
    out = tmp_path / "f.csv"
    main(args("predict", "--ckpt_path", str(last), "--prediction_writer.output", str(out)))
    assert out.read_text().count("\n") > 10
