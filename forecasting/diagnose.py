"""`python -m forecasting diagnose --config ...`: why is my LSTM not learning?

Trains a short while (`--steps`, default 200 optimiser steps, without the LR
schedule and without validation until the end), measures each known
cause of an LSTM not learning, and prints one line per check: PASS / WARN / FAIL,
the number measured, and the config change to try. The report also goes to
`<log dir>/diagnose.txt` and to TensorBoard as text.

Each check is a small function of measured numbers (tests feed them broken and
healthy cases); `run_diagnose` does the measuring.
"""

import contextlib
import copy
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.tuner import Tuner
from torch import nn
from torch.nn.utils import get_total_norm

from forecasting.callbacks.gate_saturation import network_gates, saturated
from forecasting.callbacks.grad_flow import gradient_flow
from forecasting.callbacks.grad_norms import clip_settings
from forecasting.data import features as F
from forecasting.data import stream
from forecasting.data.base import take
from forecasting.models import contract

PASS, WARN, FAIL, NA = "PASS", "WARN", "FAIL", "n/a"  # n/a: the check does not apply to this network
PRICE_LEVELS = {"open", "high", "low", "close", "adj_close", "price"}


@dataclass
class Check:
    name: str
    status: str
    measured: str
    advice: str = ""

    def __str__(self) -> str:
        return f"[{self.status}] {self.name}: {self.measured}" + (f"\n       -> {self.advice}" if self.advice else "")


# ---------------------------------------------------------------------------- checks
def check_exploding(pre_clip: list[float], clip_val: float | None, nonfinite: bool) -> Check:
    name = "1. exploding gradients"
    if nonfinite or not all(map(math.isfinite, pre_clip)):
        return Check(
            name,
            FAIL,
            "loss or gradients became NaN/Inf",
            "lower model.optimizer.init_args.lr, set model.gradient_clip_val: 1.0, check input scaling",
        )
    norms = np.asarray(pre_clip)
    median, peak = float(np.median(norms)), float(norms.max())
    clipped = float((norms > clip_val).mean()) if clip_val else 0.0
    measured = f"pre-clip norm median {median:.3g}, max {peak:.3g}; clipped on {clipped:.0%} of steps"
    if clip_val is None and peak > 10 * median:
        return Check(name, WARN, measured + " (no clipping)", "set model.gradient_clip_val: 1.0 (norm clipping)")
    if clipped > 0.9:
        return Check(
            name,
            WARN,
            measured,
            f"clipping on nearly every step rescales every update: raise model.gradient_clip_val "
            f"towards the median norm ({median:.2g}) so that it only cuts spikes",
        )
    return Check(name, PASS, measured)


def check_vanishing(first_to_last: float, forget_saturated: float | None, net_keys: str | None = "model.net.init_args") -> Check:
    """net_keys: where the network's cell/init/forget_bias switches live (None: a network without them)."""
    name = "2. vanishing gradients"
    measured = f"gradient flow first/last step {first_to_last:.2g}"
    if forget_saturated is not None:
        measured += f"; forget gates saturated {forget_saturated:.0%}"
    if first_to_last < 1e-6:
        fix = (
            f"use {net_keys}.cell: lstm with init: orthogonal and forget_bias: 1.0"
            if net_keys else "give the network a path that keeps gradients (gated recurrence, residual connections)"
        )
        return Check(
            name, FAIL, measured,
            f"the start of the window teaches nothing: {fix}, a shorter data.window, or model.tbptt_steps",
        )  # fmt: skip
    if first_to_last < 1e-3 or (forget_saturated or 0) > 0.5:
        first = f"check {net_keys}.forget_bias (1.0)" if net_keys else "check the network's initialisation"
        return Check(name, WARN, measured, f"{first} and the learning rate; shorten the window")
    return Check(name, PASS, measured)


def check_init(
    weight_hh: list[torch.Tensor], hidden: int | list[int], forget_bias: float | None, window: int,
    init_key: str | None = "model.net.init_args.init",
) -> Check:
    """weight_hh: each layer's recurrent matrix (gates stacked); hidden: its hidden size (one for all,
    or one per layer); forget_bias: mean LSTM forget-gate bias; init_key: the network's init switch."""
    name = "3. initialisation"
    sizes = [hidden] * len(weight_hh) if isinstance(hidden, int) else hidden
    blocks = [b for w, h in zip(weight_hh, sizes, strict=True) for b in w.detach().split(h)]
    sv = torch.cat([torch.linalg.svdvals(b.float()) for b in blocks])
    lo, hi = float(sv.min()), float(sv.max())
    measured = f"recurrent singular values {lo:.2g}..{hi:.2g}"
    if forget_bias is not None:
        measured += f"; forget-gate bias {forget_bias:.2g}"
    if forget_bias is not None and forget_bias < 0.5 and window > 50:
        key = init_key.rsplit(".", 1)[0] + ".forget_bias: 1.0" if init_key else "a forget-gate bias of 1 in your network"
        return Check(
            name,
            WARN,
            measured,
            f"a forget bias near 0 forgets within a few steps of a {window}-step window: set {key}",
        )
    if hi > 2 or lo < 0.05:
        advice = f"set {init_key}: orthogonal" if init_key else "initialise the recurrent weights orthogonally"
        return Check(name, WARN, measured, f"singular values far from 1: {advice}")
    return Check(name, PASS, measured)


def check_scaling(train_x: torch.Tensor, names: list[str], scaler: str | None, raw_scale: list[float] | None) -> Check:
    """train_x: (samples, features) of scaled training inputs; raw_scale: each feature's raw spread."""
    name = "4. input scaling"
    mean, std = train_x.mean(0), train_x.std(0)
    worst = int(torch.argmax(mean.abs() + (std.log()).abs()))
    measured = f"scaled train features mean {mean.abs().max():.2g} (max |.|), std {std.min():.2g}..{std.max():.2g}"
    if raw_scale:
        spread = max(raw_scale) / max(min(raw_scale), 1e-300)
        measured += f"; raw scales span {spread:.2g}x"
        if scaler == "none" and spread > 100:
            return Check(name, FAIL, measured, "features differ by orders of magnitude: set data.scaler: standard")
    if scaler == "none":
        return Check(name, WARN, measured, "scaling is off: set data.scaler: standard (fitted on train rows only)")
    if mean.abs().max() > 1 or std.max() > 10 or std.min() < 0.1:
        return Check(name, WARN, measured, f"'{names[worst]}' is far from mean 0 / std 1: use data.scaler: robust")
    return Check(name, PASS, measured)


def check_learning_rate(losses: list[float], lr: float | None, suggested: float | None) -> Check:
    name = "5. learning rate"
    n = max(len(losses) // 5, 1)
    first, last = float(np.mean(losses[:n])), float(np.mean(losses[-n:]))
    measured = f"train loss {first:.3g} -> {last:.3g}"
    if lr is not None and suggested is not None:
        measured += f"; lr {lr:.2g}, lr_find suggests {suggested:.2g}"
    if not math.isfinite(last) or last > first * 1.05:
        return Check(name, FAIL, measured, "the loss rises: divide model.optimizer.init_args.lr by 10")
    if last > first * 0.98:
        advice = f"the loss is flat: try lr {suggested:.2g} (lr_find)" if suggested else "the loss is flat: run lr_find"
        return Check(name, WARN, measured, advice)
    # The loss falls: what training shows outweighs lr_find's heuristic; only a gap of
    # two orders of magnitude is worth a look.
    if lr is not None and suggested is not None and not 0.01 < lr / suggested < 100:
        return Check(name, WARN, measured, f"the loss falls, but lr_find suggests {suggested:.2g}: try both")
    return Check(name, PASS, measured)


def check_sequence_length(flow: torch.Tensor, window: int, tbptt: int | None) -> Check:
    """flow: ||dL/dx_t|| for t = first..last step of the window."""
    name = "6. sequence length"
    back = flow.flip(0) / flow[-1].clamp(min=1e-30)
    dead = torch.nonzero(back < 1e-3)
    memory = int(dead[0]) if len(dead) else window
    measured = f"gradient falls below 1e-3 of the last step's after {memory} of {window} steps"
    if memory < window / 2 and tbptt is None:
        return Check(
            name,
            WARN,
            measured,
            f"the first {window - memory} steps barely train: set data.window near {max(memory, 2)} "
            f"or model.tbptt_steps: {max(memory, 2)}",
        )
    return Check(name, PASS, measured)


def check_baselines(skills: dict[str, float], corr_with_last: float | None) -> Check:
    name = "7. beating baselines"
    if not skills:
        return Check(name, WARN, "no baselines from this data module")
    measured = ", ".join(f"skill vs {k} {v:+.3f}" for k, v in skills.items())
    if corr_with_last is not None:
        measured += f"; corr(forecast, last value) {corr_with_last:.2f}"
    if corr_with_last is not None and corr_with_last > 0.95 and skills.get("naive", 1) < 0.05:
        return Check(name, FAIL, measured, "the model copies the last value: train longer, check lr and features")
    if max(skills.values()) <= 0:
        return Check(
            name,
            WARN,
            measured,
            "no better than a baseline yet: train longer (fit), then compare; in finance this can be the truth",
        )
    return Check(name, PASS, measured)


def check_target(target: str | None) -> Check:
    name = "8. target choice"
    if target is None:
        return Check(name, PASS, "synthetic target")
    if target in PRICE_LEVELS or (target not in F.TRANSFORMS and "price" in target):
        return Check(
            name,
            FAIL,
            f"target '{target}' is a price level (non-stationary)",
            "forecast data.target: log_return or gk_log_var; a level's best forecast is yesterday's",
        )
    return Check(name, PASS, f"target '{target}'" + (" (a stationary transform)" if target in F.TRANSFORMS else ""))


def check_overfit(first: float, last: float, steps: int) -> Check:
    name = "0. overfit one batch"
    measured = f"loss on one batch {first:.3g} -> {last:.3g} in {steps} steps ({first / max(last, 1e-30):.3g}x)"
    if not math.isfinite(last) or last > first / 10:
        return Check(
            name,
            FAIL,
            measured,
            "the model cannot even memorise one batch: the model or the data pipeline is broken "
            "(targets misaligned with inputs, frozen parameters, a learning rate far off); fix this first",
        )
    return Check(name, PASS, measured)


def check_copying(
    best_lag: int, lag_corr: float, corr_with_last: float | None, std_ratio: float,
    dropout_key: str = "model.net.init_args.dropout",
) -> Check:
    name = "9. copying or flat forecasts"
    measured = f"best lag {best_lag} (corr {lag_corr:.2f}), forecast std / target std {std_ratio:.2f}"
    if corr_with_last is not None:
        measured += f", corr with last input {corr_with_last:.2f}"
    if best_lag == 1 and (corr_with_last or 0) > 0.95:
        return Check(
            name,
            FAIL,
            measured,
            "the forecast is yesterday's value: the model learned persistence only; try a stationary "
            "target (returns, log variance), more training, or a learning rate from lr_find",
        )
    if std_ratio < 0.1:
        return Check(
            name,
            WARN,
            measured,
            f"a flat forecast near the mean: lower {dropout_key} or weight_decay, try the lr_find rate, "
            "check that the target is scaled, train longer",
        )
    return Check(name, PASS, measured)


# ---------------------------------------------------------------------------- measuring
def suggested_lr(finder) -> tuple[float | None, float]:
    """(suggestion, lr at the lowest loss) from the results of Lightning's LR finder.

    The suggestion is where the loss falls fastest per decade of learning rate, looked for after the
    smoothed loss's initial peak (its running mean starts low and first RISES while it warms up) and
    before the last point. Not `finder.suggestion()`: Lightning 2.6 differentiates with respect to the
    learning rate itself, not its logarithm, which on the log-spaced sweep favours the smallest rates
    (Lightning-AI/pytorch-lightning#21141): on the bundled data it suggested 5e-6."""
    lrs = np.asarray(finder.results["lr"], dtype=float)
    losses = np.asarray(finder.results["loss"], dtype=float)
    peak = int(np.nanargmax(losses[: max(len(losses) // 2, 1)]))
    idx = np.arange(max(peak, min(10, len(losses) // 4)), len(losses) - 1)
    idx = idx[np.isfinite(losses[idx])]
    if len(idx) < 3:
        return None, float(lrs[int(np.nanargmin(losses))])
    slope = np.gradient(losses[idx], np.log10(lrs[idx]))
    at_min = float(lrs[idx[int(np.argmin(losses[idx]))]])
    if slope.min() >= 0:  # the loss never falls after its warm-up
        return None, at_min
    return float(lrs[idx[int(np.argmin(slope))]]), at_min


class Recorder(L.Callback):
    """Pre-clip total gradient norm of every optimiser step and the training loss of every batch."""

    def __init__(self):
        self.norms, self.losses, self.nonfinite = [], [], False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        norm = float(get_total_norm([p.grad for p in pl_module.parameters() if p.grad is not None]))
        self.norms.append(norm)
        if not math.isfinite(norm):
            self.nonfinite, trainer.should_stop = True, True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.losses.append(float(loss))
            self.nonfinite |= not math.isfinite(self.losses[-1])


def overfit_one_batch(model: L.LightningModule, batch: dict, steps: int = 300) -> tuple[float, float]:
    """Train a copy of the network on one batch with the configured optimiser, without dropout,
    and return the first and the final loss."""
    torch.manual_seed(0)
    net = copy.deepcopy(model.net).train()
    for module in net.modules():  # memorising needs no regularisation
        if isinstance(module, nn.RNNBase):
            module.dropout = 0.0
        elif isinstance(module, nn.Dropout):
            module.p = 0.0
    optimizer = model.optimizer(net.parameters())
    y = batch["y"][:, -1] if batch["y"].dim() == 3 else batch["y"]
    losses = []
    for _ in range(steps):
        loss = model.output_loss(contract.call(net, batch["x"])[0][:, -1], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], min(losses[-10:])


def net_key(model: L.LightningModule, key: str, fallback: str) -> str:
    """The config key to advise: `model.net.init_args.<key>` when the network takes it, else `fallback`
    (advice never names a key that the user's network ignores)."""
    net = model.hparams.get("net")
    return f"model.net.init_args.{key}" if net is not None and contract.takes(net, key) else fallback


def recurrent_weights(net: nn.Module) -> tuple[list[torch.Tensor], list[int], float | None]:
    """Every recurrent layer's weight_hh (gates stacked), its hidden size, and the mean LSTM
    forget-gate bias (None without LSTM layers)."""
    weights, sizes, forget = [], [], []
    for _, rnn in contract.recurrent_layers(net):
        for k in range(rnn.num_layers):
            weights.append(getattr(rnn, f"weight_hh_l{k}"))
            sizes.append(rnn.hidden_size)
            if isinstance(rnn, nn.LSTM) and rnn.bias:
                h = rnn.hidden_size
                forget.append((getattr(rnn, f"bias_ih_l{k}") + getattr(rnn, f"bias_hh_l{k}"))[h : 2 * h].detach())
    return weights, sizes, float(torch.cat(forget).mean()) if forget else None


def run_diagnose(trainer: L.Trainer, model: L.LightningModule, dm: L.LightningDataModule, steps: int, lr_find: bool):
    hp = model.hparams
    window = getattr(dm, "window", None) or getattr(dm, "seq_len", 0)
    weight_hh, sizes, forget = recurrent_weights(model.net)
    if weight_hh:
        checks = {"init": check_init(weight_hh, sizes, forget, window, net_key(model, "init", None))}
    else:
        checks = {"init": Check("3. initialisation", NA, "no recurrent layer in the network")}

    dm.setup("fit")
    train = dm.train_dataloader().dataset
    batch = take(train, range(min(len(train), 4096)))
    one = take(train, torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:64].tolist())
    checks["overfit"] = check_overfit(*overfit_one_batch(model, one), steps=300)
    x_last = batch["x"][:, -1]
    stats = getattr(dm, "stats", None) or {}
    raw_scale = [float(v) for v in stats["scale"][0]] if stats.get("scale") else None
    names = list(getattr(dm, "features", [f"x{i}" for i in range(x_last.shape[1])]))
    checks["scaling"] = check_scaling(x_last, names, getattr(dm, "scaler", None), raw_scale)

    optimizer = model.configure_optimizers()  # a throwaway, only to read the configured lr
    lr = (optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer).param_groups[0]["lr"]
    suggested = None
    if lr_find:
        probe = copy.deepcopy(model)
        probe.hparams.tbptt_steps, probe.automatic_optimization, probe.lr_scheduler = None, True, None
        with own_checkpoint_restore():
            finder = Tuner(quiet_trainer()).lr_find(
                probe, datamodule=dm, min_lr=1e-6, max_lr=1.0, num_training=100, update_attr=False
            )
        suggested = suggested_lr(finder)[0] if finder is not None else None

    recorder = Recorder()
    scheduler, model.lr_scheduler = model.lr_scheduler, None  # a few hundred steps: no schedule, no validation
    try:
        quiet_trainer(max_steps=steps, callbacks=[recorder]).fit(model, dm)
    finally:
        model.lr_scheduler = scheduler
    checks["exploding"] = check_exploding(recorder.norms, clip_settings(trainer, model)[0], recorder.nonfinite)
    checks["lr"] = check_learning_rate(recorder.losses or [float("nan")], lr, suggested)

    metrics = quiet_trainer(limit_val_batches=1.0).validate(model, dm, verbose=False)[0]
    val = dm.val_dataloader().dataset
    vbatch = take(val, range(min(len(val), 256)))
    if "at" in vbatch:  # stream mode: whole series; measure on windows ending at the scored days
        vbatch = stream.as_windows(vbatch, window or 64, 256)
    model.eval()
    with torch.enable_grad():
        flow = gradient_flow(model.net, vbatch["x"], vbatch["y"], model.output_loss).double()
    forgets = [f.flatten() for _, f in network_gates(model.net, vbatch["x"]).values()]
    gates = saturated(torch.cat(forgets)) if forgets else None
    net_keys = "model.net.init_args" if contract.takes(hp["net"], "forget_bias") else None
    checks["vanishing"] = check_vanishing(float(flow[0] / flow[-1].clamp(min=1e-300)), gates, net_keys)
    checks["length"] = check_sequence_length(flow, flow.shape[0], hp.get("tbptt_steps"))

    skills = {k.removeprefix("val/skill_vs_"): float(v) for k, v in metrics.items() if k.startswith("val/skill_vs_")}
    corr = metrics.get("val/corr_with_last_input")  # the validation run measured it on every window
    checks["baselines"] = check_baselines(skills, corr)
    copying = [metrics.get(k) for k in ("val/best_lag", "val/best_lag_corr", "val/pred_std_ratio")]
    if None not in copying:
        dropout_key = net_key(model, "dropout", "the network's dropout")
        checks["copying"] = check_copying(int(copying[0]), copying[1], corr, copying[2], dropout_key)
    checks["target"] = check_target(getattr(dm, "target", None) if hasattr(dm, "stats") else None)
    order = ("overfit", "exploding", "vanishing", "init", "scaling", "lr", "length", "baselines", "target", "copying")
    return [checks[k] for k in order if k in checks], stats.get("ranges")


@contextlib.contextmanager
def own_checkpoint_restore():
    """lr_find restores the temporary checkpoint it has just written itself, and Lightning logs
    "`weights_only` was not set" at INFO for it: nothing a user loaded, so that one logger is
    raised to WARNING while the sweep runs."""
    log = logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def quiet_trainer(**kwargs) -> L.Trainer:
    """A Trainer that writes nothing: diagnose measures, the report is its only output. Its root
    dir is a fresh temporary folder (lr_find's own `.lr_find_*.ckpt` goes there, not into the
    working directory), and runs are bounded by steps (max_epochs -1: no "max_epochs not set")."""
    settings = dict(
        default_root_dir=tempfile.mkdtemp(prefix="forecasting-diagnose-"),
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    return L.Trainer(**{**settings, **kwargs})


def report(checks: list[Check], log_dir: str | None, writer=None, ranges: dict | None = None) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in (FAIL, WARN, PASS)}
    text = "\n".join(map(str, checks)) + f"\n\n{counts[FAIL]} FAIL, {counts[WARN]} WARN, {counts[PASS]} PASS"
    if ranges:  # the leakage audit: what each part of the pipeline saw
        text += "\n\ndays covered: " + "; ".join(f"{k} {v[0]}..{v[1]}" for k, v in ranges.items())
    if log_dir:
        path = Path(log_dir) / "diagnose.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        text += f"\n(report saved to {path})"
    if writer is not None:
        writer.add_text("diagnose", "\n".join("    " + line for line in text.splitlines()))
    return text
