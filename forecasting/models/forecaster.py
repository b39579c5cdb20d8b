"""The LightningModule: wraps any network (`model.net`, contract.py; default lstm.py) with a loss,
metrics and an optimiser.

A batch from the data module is a dict: x (B, window, F) scaled inputs; y (B, H)
scaled targets of the window's last step, or (B, window, H) with dense targets;
y_loc, y_scale (B, 1) to undo the target scaling; row (B,) the window's last row.

Two ways to train, one key apart:
- full BPTT (`tbptt_steps: null`, automatic optimisation): one backward pass
  through the whole window per batch; loss on the last step, or on every step
  after `burn_in` with `dense_loss: true`.
- truncated BPTT (`tbptt_steps: k`, manual optimisation): the window is split
  into chunks of k steps; the hidden state is carried over and detached between
  chunks, and every chunk does its own backward, clip and optimiser step
  (loss on every step after `burn_in`). A "step" (global_step, max_steps) is then
  one chunk: ceil(window / k) per batch.
- stream mode (`data.mode: stream`, with `tbptt_steps: k`): a batch is the next k steps of
  B streams laid end to end through the whole history (data/stream.py); each stream's state
  is carried (detached) from batch to batch and zeroed where `reset` says a stream starts;
  one optimiser step per batch, loss after `burn_in` steps of each stream.
Clipping is set once for all three: `gradient_clip_val` / `gradient_clip_algorithm`
here, applied with Lightning's `clip_gradients` in `on_before_optimizer_step`,
where fp16 AMP gradients are already unscaled.

Metrics: `stage/loss` (the training loss, scaled units), `stage/mae`,
`stage/rmse` (scaled units) and `stage/mae_orig`, `stage/rmse_orig` (the
target's original units, e.g. log variance). Validation and test always score
the forecast made at the end of each window, so both modes compare.

`head` (models/heads.py) says what the network's outputs mean: a point forecast (default), or a
distribution (gaussian, student_t, quantiles) trained by its likelihood or pinball loss; then
`stage/nll`, `stage/crps`, `stage/coverage_90`, `stage/kupiec_p_05`, ... (calibration.py, original
units) are logged too. Every head gets split-conformal intervals: `test/conformal_coverage_90`.

Example: python -m forecasting fit --config configs/volatility.yaml
"""

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import CatMetric, MeanAbsoluteError, MeanMetric, MeanSquaredError

from forecasting import calibration, persistence, risk_baselines
from forecasting.callbacks.common import tensorboard
from forecasting.data import stream
from forecasting.errors import ForecastingError
from forecasting.models import contract, heads
from forecasting.models import state as lanes
from forecasting.models.contract import NetworkCallable
from forecasting.models.lstm import StackedRNN

LOSSES = {"mse": nn.MSELoss, "mae": nn.L1Loss, "huber": nn.HuberLoss}


def metrics() -> nn.ModuleDict:
    """torchmetrics accumulate over the epoch and reduce across DDP ranks."""
    return nn.ModuleDict(
        {
            "mae": MeanAbsoluteError(),
            "rmse": MeanSquaredError(squared=False),
            "mae_orig": MeanAbsoluteError(),
            "rmse_orig": MeanSquaredError(squared=False),
        }
    )


class Forecaster(L.LightningModule):
    def __init__(
        self,
        net: NetworkCallable = StackedRNN,  # any network of the contract (contract.py), by class_path
        n_features: int = 3,  # linked from the data module by the CLI
        horizon: int = 1,  # linked from the data module by the CLI
        loss: str = "mse",
        dense_loss: bool = False,  # loss on every step after burn_in (always so with tbptt_steps)
        burn_in: int = 8,  # first steps of a window without loss: the state is still warming up
        tbptt_steps: int | None = None,  # null: full BPTT; k: truncated BPTT in chunks of k steps
        gradient_clip_val: float | None = 1.0,  # the one clipping key for both modes; null: off
        gradient_clip_algorithm: str = "norm",
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        target_kind: str = "other",  # linked from the data: "log_variance" adds QLIKE, "return" the hit rate
        head: str = "point",  # point | gaussian | student_t | quantiles: what the outputs mean (heads.py)
        quantiles: list[float] | None = None,  # levels of head: quantiles; null: heads.DEFAULT_QUANTILES
        min_scale: float = 1e-3,  # floor of a distribution's scale (scaled units): NLL cannot go to -inf
    ):
        super().__init__()
        checks = {
            "model.loss": (loss in LOSSES, f"use one of {list(LOSSES)}"),
            "model.scheduler_interval": (scheduler_interval in ("epoch", "step"), "use 'epoch' or 'step'"),
            "model.burn_in": (burn_in >= 0, "use 0 or more steps"),
            "model.tbptt_steps": (tbptt_steps is None or tbptt_steps >= 1, "use null or a positive integer"),
            "model.gradient_clip_val": (gradient_clip_val is None or gradient_clip_val > 0, "use null or > 0"),
            "model.gradient_clip_algorithm": (gradient_clip_algorithm in ("norm", "value"), "use 'norm' or 'value'"),
        }
        for key, (ok, hint) in checks.items():
            if not ok:
                raise ForecastingError(f"{key}: invalid value {locals()[key.split('.')[1]]!r}; {hint}")
        # The optimiser callables are classes, not plain data: keep them out of the checkpoint
        # so it loads with weights_only=True (config.yaml in the log dir records them). The
        # network is stored as plain data (class_path and init_args) to check checkpoints against.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "net"])
        self.hparams["net"] = contract.describe(net)
        self.loss_fn = LOSSES[loss]()
        self.head = heads.build(head, self.loss_fn, quantiles, min_scale)
        # The network emits head.n_params outputs per horizon step; the head gives them meaning.
        self.net = contract.build(net, n_features, horizon * self.head.n_params, tbptt=tbptt_steps is not None)
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.metrics = nn.ModuleDict({"val": metrics(), "test": metrics()})
        self.losses = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})  # val/loss, test/loss
        # The whole validation series (first horizon step), for the persistence and flatness checks.
        self.val_series = nn.ModuleDict({k: CatMetric() for k in ("row", "forecast", "actual", "last_input")})
        # Epoch means in original units, model and baselines on the same windows (see baselines.py).
        names = ["mse_orig", "qlike", "hit_rate", "up_share"]
        names += [f"baseline_{m}_{b}" for m in ("mse", "qlike") for b in ("naive", "mean", "har", "garch")]
        self.means = nn.ModuleDict({s: nn.ModuleDict({n: MeanMetric() for n in names}) for s in ("val", "test")})
        # Forecast distributions and actuals of the epoch, in original units (calibration.py).
        self.calibration = nn.ModuleDict({s: calibration.Collector() for s in ("val", "test")})
        self.conformal: dict | None = None  # split-conformal radii from the last validation; in the checkpoint
        self.automatic_optimization = tbptt_steps is None
        self._loss_sum, self._loss_n = 0.0, 0  # training loss since the last logged step
        self._carry, self._state_dims = None, None  # stream mode: each lane's state, its batch dims

    def metric_names(self) -> set[str]:
        """Every name this module logs: monitors are checked against it before training (validation.py)."""
        names = {"train/loss", "train/loss_step", "train/loss_epoch"}
        for stage in ("val", "test"):
            names |= {f"{stage}/{n}" for n in ["loss", *self.metrics[stage], *self.means[stage]]}
            names |= {f"{stage}/skill_vs_{b}" for b in ("naive", "mean", "har", "garch")}
        quantiles = self.head.levels if self.head.family == "quantiles" else None
        scores = calibration.metric_names(self.head.family, quantiles, self.hparams.target_kind == "return")
        names |= {f"{stage}/{n}" for n in scores for stage in ("val", "test")}
        return names | {f"val/{n}" for n in ("best_lag", "best_lag_corr", "pred_std_ratio", "corr_with_last_input")}

    @property
    def dense(self) -> bool:
        """Whether training needs a target at every step (the CLI links this to data.dense_targets)."""
        return self.hparams.dense_loss or self.hparams.tbptt_steps is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Forecast made at the end of each window: (B, window, F) -> (B, H); a distribution's
        mean, or its median quantile (heads.py). `distribution(x)` gives all its parameters."""
        return self.head.point(self.distribution(x))

    def distribution(self, x: torch.Tensor) -> torch.Tensor:
        """(B, window, F) -> (B, H, n_params): the head's parameters at each window's end, scaled units."""
        return self.forecasts({"x": x})[1]

    def as_forecast(self, params: torch.Tensor) -> calibration.Forecast:
        """The head's parameters (original units) as a calibration.Forecast: quantiles, intervals, CDF."""
        values = params.detach().float().cpu().numpy() if torch.is_tensor(params) else params
        return calibration.Forecast(self.head.family, values, getattr(self.head, "levels", None))

    def output_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of raw network outputs (..., H * n_params) against targets (..., H):
        what diagnostics that run the network themselves (gradient flow, overfit one batch) need."""
        return self.head.loss(self.head(out), y)

    def loss_after_burn_in(self, out: torch.Tensor, y: torch.Tensor, offset: int = 0) -> torch.Tensor | None:
        """Loss over steps at window position >= burn_in; `offset` is the position of out[:, 0]."""
        first = max(0, self.hparams.burn_in - offset)
        if first >= out.shape[1]:
            return None
        return self.output_loss(out[:, first:], y[:, first:])

    def log_train_loss(self, loss: torch.Tensor, n: int, batch_idx: int, batches_before: int) -> None:
        """train/loss_step: the mean over the batches since the last written step; train/loss_epoch:
        the epoch's mean over windows. `self.log` costs ~0.4 ms a call on CPU and ~1 ms on a GPU
        (BENCHMARKS.md), so the losses are summed on the device and logged only on the batches
        Lightning writes (every trainer.log_every_n_steps batches, counted over the whole run:
        `batches_before` is that count before this batch) and on the epoch's last batch."""
        self._loss_sum, self._loss_n = self._loss_sum + loss * n, self._loss_n + n
        trainer, every = self.trainer, self.trainer.log_every_n_steps
        written = every > 0 and (batches_before + 1) % every == 0  # Lightning's own test for this batch
        if written or batch_idx + 1 == trainer.num_training_batches or trainer.should_stop:
            mean = self._loss_sum / self._loss_n
            self.log("train/loss", mean, prog_bar=True, on_step=True, on_epoch=True, batch_size=self._loss_n)
            self._loss_sum, self._loss_n = 0.0, 0

    def forecasts(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs at every step, the head's parameters of the scored forecasts (B, H, n_params)):
        each window's last step, or in stream mode the steps `at` names of the whole series the
        batch holds."""
        out, _ = contract.call(self.net, batch["x"])
        return out, self.head(stream.scored(out, batch))

    def _step(self, batch: dict, stage: str, batch_idx: int = 0) -> torch.Tensor:
        out, params = self.forecasts(batch)
        y = batch["y"]
        pred = self.head.point(params)
        if y.dim() == 3:  # dense targets: one per time step
            loss = self.loss_after_burn_in(out, y) if self.dense else self.head.loss(params, y[:, -1])
            y = y[:, -1]
        else:
            loss = self.head.loss(params, y)
        if stage == "train":  # one optimiser step per batch: global_step counts the batches before this one
            self.log_train_loss(loss.detach(), len(y), batch_idx, batches_before=self.trainer.global_step)
        else:
            # A MeanMetric, not self.log(..., sync_dist=True): its sums reduce exactly across DDP
            # ranks holding unequal numbers of windows (sync_dist's mean truncates the summed count).
            self.losses[stage].update(loss.detach(), weight=len(y))
            self.log(f"{stage}/loss", self.losses[stage], prog_bar=True)
            pred_orig = pred * batch["y_scale"] + batch["y_loc"]  # undo the target scaling once
            y_orig = y * batch["y_scale"] + batch["y_loc"]
            for name, metric in self.metrics[stage].items():
                if name.endswith("_orig"):
                    metric.update(pred_orig, y_orig)
                else:
                    metric.update(pred, y)
                self.log(f"{stage}/{name}", metric, on_epoch=True, batch_size=len(y))
            self.update_means(stage, pred_orig, y_orig, batch)
            params_orig = self.head.to_original(params, batch["y_loc"], batch["y_scale"])
            self.calibration[stage].update(params_orig, y_orig, batch.get("risk_baselines", {}))
        return loss

    def update_means(self, stage: str, pred: torch.Tensor, actual: torch.Tensor, batch: dict) -> None:
        means = self.means[stage]
        forecasts = {"": pred, **{f"_{name}": f for name, f in batch.get("baselines", {}).items()}}
        for suffix, forecast in forecasts.items():
            prefix = "baseline_" if suffix else ""
            means[f"{prefix}mse{'_orig' if not suffix else suffix}"].update((forecast - actual) ** 2)
            if self.hparams.target_kind == "log_variance":
                # QLIKE on variances exp(target): robust to noise in the variance proxy (Patton 2011).
                d = actual - forecast
                means[f"{prefix}qlike{suffix}"].update(torch.exp(d) - d - 1)
        if stage == "val":
            series = {"row": batch["row"].float(), "forecast": pred[:, 0], "actual": actual[:, 0]}
            if "naive" in batch.get("baselines", {}):
                series["last_input"] = batch["baselines"]["naive"][:, 0]
            for name, value in series.items():
                self.val_series[name].update(value)
        if self.hparams.target_kind == "return":
            means["hit_rate"].update((torch.sign(pred) == torch.sign(actual)).float())
            means["up_share"].update((actual > 0).float())

    def log_means(self, stage: str) -> None:
        """Epoch values of the model and baseline means, and skill 1 - MSE(model) / MSE(baseline)."""
        values = {name: m.compute() for name, m in self.means[stage].items() if m.update_count > 0}
        for name, value in values.items():
            self.log(f"{stage}/{name}", value)
        for base in ("naive", "mean", "har", "garch"):
            if f"baseline_mse_{base}" in values:
                skill = 1 - values["mse_orig"] / values[f"baseline_mse_{base}"]
                self.log(f"{stage}/skill_vs_{base}", skill)
        for metric in self.means[stage].values():
            metric.reset()
        self.log_calibration(stage)

    def log_calibration(self, stage: str) -> None:
        """NLL, CRPS, pinball, coverage, VaR breaches and Kupiec tests of the head and the risk
        baselines; validation fits the split-conformal radii that test and predict use."""
        data = self.calibration[stage].compute(self.head.n_params)
        self.calibration[stage].reset()
        if data is None:
            return
        forecast, actual = self.as_forecast(data["params"]), data["actual"]
        returns = self.hparams.target_kind == "return"
        if stage == "val":
            self.conformal = calibration.fit_conformal(forecast, actual)
        values = calibration.evaluate(forecast, actual, returns, self.conformal if stage == "test" else None)
        for name, parts in data.items():
            if name.startswith("risk_"):
                family, base_levels = risk_baselines.FAMILIES[name[5:]]
                base = calibration.evaluate(calibration.Forecast(family, parts, base_levels), actual, returns)
                values |= {f"baseline_{m}_{name[5:]}": v for m, v in base.items() if m in calibration.BASELINE_METRICS}
        for name, value in values.items():
            self.log(f"{stage}/{name}", value)
        writer = tensorboard(self.trainer) if self.head.family != "point" and self._trainer is not None else None
        if writer is not None:
            title = f"{stage}: PIT histogram, step {self.global_step}"
            fig = calibration.pit_figure(forecast.cdf(actual), title)
            writer.add_figure(f"calibration/{stage}", fig, self.global_step)

    def on_validation_epoch_end(self) -> None:
        self.log_means("val")
        self.log_persistence()

    def log_persistence(self) -> None:
        """val/best_lag 1 with val/corr_with_last_input near 1: the model copies the last value;
        val/pred_std_ratio below ~0.1: a flat forecast (persistence.py)."""
        if self.val_series["forecast"].update_count == 0:
            return
        values = {k: m.compute().double().cpu().numpy() for k, m in self.val_series.items() if m.update_count > 0}
        lag, corr = persistence.best_lag(values["row"].astype(np.int64), values["forecast"], values["actual"])
        self.log("val/best_lag", float(lag))
        self.log("val/best_lag_corr", corr)
        self.log("val/pred_std_ratio", persistence.pred_std_ratio(values["forecast"], values["actual"]))
        if "last_input" in values:
            self.log(
                "val/corr_with_last_input", persistence.corr_with_last_input(values["forecast"], values["last_input"])
            )
        for metric in self.val_series.values():
            metric.reset()

    def on_test_epoch_end(self) -> None:
        self.log_means("test")

    def chunk_losses(self, x: torch.Tensor, y: torch.Tensor):
        """Truncated BPTT's forward: yield the loss of each chunk of k steps (None inside the
        burn-in). The state is carried over but detached, so no loss reaches an earlier chunk."""
        k, state = self.hparams.tbptt_steps, None
        for i, (x_chunk, y_chunk) in enumerate(zip(x.split(k, dim=1), y.split(k, dim=1), strict=True)):
            out, state = contract.call(self.net, x_chunk, state)
            state = contract.detach(state)  # any nesting of tensors: the network's own business
            yield self.loss_after_burn_in(out, y_chunk, offset=i * k)

    def _tbptt_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Truncated BPTT: backward, clip and optimiser step per chunk."""
        optimizer, losses = self.optimizers(), []
        for loss in self.chunk_losses(batch["x"], batch["y"]):
            if loss is None:
                continue
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()  # clipping happens in on_before_optimizer_step
            losses.append(loss.detach())
        if not losses:
            raise ForecastingError(f"model.burn_in ({self.hparams.burn_in}) covers the whole window; lower it")
        loss = torch.stack(losses).mean()
        # Every batch makes the same number of steps (one per chunk), global_step now includes this one's.
        batches_before = self.trainer.global_step // len(losses) - 1
        self.log_train_loss(loss, len(batch["x"]), batch_idx, batches_before)
        if self.lr_schedulers() is not None and self.hparams.scheduler_interval == "step":
            self.step_scheduler()
        return loss

    def stream_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Stream mode's forward: (loss, number of scored steps) of the next chunk of every lane,
        each lane's state carried over from the previous batch (detached: no gradient reaches an
        earlier batch) and zeroed where `reset` says a stream starts."""
        state, reset = self._carry, batch["reset"]
        if state is not None and bool(reset.all()):
            state = None  # every lane starts afresh: the network's own initial state
        elif state is not None and bool(reset.any()):
            if self._state_dims is None:
                self._state_dims = lanes.batch_dims(self.net, self.hparams.n_features)
            state = lanes.keep_lanes(state, ~reset, self._state_dims)
        out, state = contract.call(self.net, batch["x"], state)
        self._carry = contract.detach(state)
        scored = batch["pos"] >= self.hparams.burn_in  # after the burn-in at each stream's start only
        n = scored.sum()
        loss = self.output_loss(out[scored], batch["y"][scored]) if n > 0 else out.sum() * 0.0
        return loss, n

    def _stream_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Stream mode: one optimiser step per batch (one chunk of k steps of every lane)."""
        loss, n = self.stream_loss(batch)
        # Under DDP every rank must run backward (gradients are averaged across ranks) and step or
        # skip together, so the count that decides is the sum over ranks.
        total = self.trainer.strategy.reduce(n.float(), reduce_op="sum") if self.trainer.world_size > 1 else n
        if total > 0:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()  # clipping happens in on_before_optimizer_step
        if n > 0 or self._loss_n > 0:  # (a last batch without loss still writes the pending mean)
            self.log_train_loss(loss.detach(), int(n), batch_idx, batches_before=self._batches_before())
        if self.lr_schedulers() is not None and self.hparams.scheduler_interval == "step":
            self.step_scheduler()
        return loss.detach()

    def _batches_before(self) -> int:
        """Batches trained before this one in the whole run (Lightning's count for its logging test)."""
        return self.trainer.fit_loop.epoch_loop._batches_that_stepped

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.conformal is not None:  # split-conformal radii, plain lists: loads with weights_only=True
            checkpoint["conformal"] = self.conformal
        # Stream mode: the lanes' states, so a mid-epoch resume continues exactly (the data module
        # saves the position). Each rank holds its own lanes: gathered, rank r's at index r.
        if self._carry is not None:
            carry = self.all_gather(self._carry) if self.trainer.world_size > 1 else self._carry
            checkpoint["stream_state"] = {"world": self.trainer.world_size, "state": carry}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.conformal = checkpoint.get("conformal")
        saved = checkpoint.get("stream_state")
        self._carry = None
        trainer = self._trainer  # None when loaded outside a Trainer (load_from_checkpoint, streaming.py)
        if saved is not None and trainer is not None and trainer.state.fn.value == "fit":
            carry, world = saved["state"], saved["world"]
            if world > 1:  # this rank's share; with another world size the lanes differ: start afresh
                same = world == self.trainer.world_size
                carry = lanes.rebuild(carry, [t[self.global_rank] for t in lanes.leaves(carry)]) if same else None
            self._carry = carry

    def training_step(self, batch, batch_idx):
        if "reset" in batch:
            if self.automatic_optimization:  # lr_find sweeps in automatic mode: Lightning steps
                return self.stream_loss(batch)[0]
            return self._stream_step(batch, batch_idx)
        if self.hparams.tbptt_steps is None:
            return self._step(batch, "train", batch_idx)
        return self._tbptt_step(batch, batch_idx)

    def on_before_optimizer_step(self, optimizer) -> None:
        # Callbacks' on_before_optimizer_step ran already: diagnostics there see pre-clip gradients.
        if self.hparams.gradient_clip_val is not None:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.hparams.gradient_clip_val,
                gradient_clip_algorithm=self.hparams.gradient_clip_algorithm,
            )

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_n = 0.0, 0  # nothing carried over from lr_find or an interrupted epoch

    def on_train_epoch_end(self) -> None:
        # Manual optimisation: Lightning steps no scheduler, so the module does (same YAML as automatic).
        if not self.automatic_optimization and self.lr_schedulers() is not None:
            if self.hparams.scheduler_interval == "epoch":
                self.step_scheduler()

    def step_scheduler(self) -> None:
        scheduler = self.lr_schedulers()
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            value = self.trainer.callback_metrics.get(self.hparams.scheduler_monitor)
            if value is not None:  # no validation yet this epoch: nothing to compare
                scheduler.step(value)
        else:
            scheduler.step()

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        loc, scale = batch["y_loc"], batch["y_scale"]
        params = self.head.to_original(self.forecasts(batch)[1], loc, scale)
        out = {"row": batch["row"], "forecast": self.head.point(params), "actual": batch["y"] * scale + loc}
        # predict's CSV columns: the distribution's parameters, and the split-conformal intervals.
        columns = {} if self.head.family == "point" else dict(zip(self.head.names, params.unbind(-1), strict=True))
        if self.conformal:
            forecast = self.as_forecast(params)
            for level in calibration.INTERVALS:
                radius = self.conformal[calibration.pct(level)]
                for side, v in zip(("lo", "hi"), calibration.conformal_interval(forecast, level, radius), strict=True):
                    columns[f"conformal_{side}_{calibration.pct(level)}"] = torch.as_tensor(v, dtype=params.dtype)
        if columns:
            out["columns"] = columns
        return out

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        scheduler = {
            "scheduler": self.lr_scheduler(optimizer),
            "interval": self.hparams.scheduler_interval,
            "monitor": self.hparams.scheduler_monitor,  # only ReduceLROnPlateau reads it
        }
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
