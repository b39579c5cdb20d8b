"""Forecast versus actual, in the target's original units, for one ticker: TensorBoard images
`forecast/val` (every `every_n_validations` validation epochs) and `forecast/test` (in `test`).
A distribution head (model.head) adds its central 50% and 90% intervals as bands."""

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from forecasting import calibration
from forecasting.callbacks.common import DrawsFigures, tensorboard
from forecasting.data import stream


class ForecastPlot(DrawsFigures):
    """ticker: the series to draw; default the split's first. The first horizon step is drawn.

    Where the data module describes its samples by date and ticker (PriceDataModule) the x axis is
    the date each forecast was made (its target is the next trading day); otherwise the row index.
    The forecasts are those validation computes anyway (a forward hook on `pl_module.net`
    keeps its last-step output), so the cost is one figure per drawn epoch. Rank zero only; under DDP
    it sees only its shard (every world_size-th window).

    every_n_validations: draw after the 0th, N-th, 2N-th, ... validation of `fit` (not the sanity
    check), and in every `test`. A figure costs tens of ms per validation on a CPU, and the first of
    a process ~0.25 s more (fonts): BENCHMARKS.md; a worker thread draws it while training goes on
    (DrawsFigures). 1 draws every validation.
    """

    def __init__(self, ticker: str | None = None, every_n_validations: int = 5, max_points: int = 2000):
        self.ticker, self.every_n_validations, self.max_points = ticker, every_n_validations, max_points
        self.drawn: dict | None = None  # the last figure's data (ticker, rows, x, forecast, actual)
        self._active, self._hook, self._output = False, None, None
        self._validations = 0  # validations of fit seen so far (sanity check excluded)

    def _start(self, trainer, pl_module, stage: str) -> None:
        due = stage == "test"
        if stage == "val" and not trainer.sanity_checking:
            due = self._validations % self.every_n_validations == 0
            self._validations += 1
        self._active = due and tensorboard(trainer) is not None
        self._parts, self._wanted, self._dates, self._output, self._hook = [], None, None, None, None
        net = getattr(pl_module, "net", None)
        if self._active and isinstance(net, nn.Module):
            self._hook = net.register_forward_hook(self._keep_output)
        dm = trainer.datamodule
        ends = getattr(dm.dataset(stage), "ends", None) if self._active and hasattr(dm, "dataset") else None
        where = dm.describe_rows(ends, stage) if ends is not None else None
        if where is not None and {"ticker", "date"} <= set(where.columns):
            # Which rows belong to the ticker: looked up once per epoch, not per batch.
            self._ticker = self.ticker or where["ticker"].iat[0]
            mine = torch.from_numpy((where["ticker"] == self._ticker).to_numpy().copy())
            self._wanted = torch.zeros(int(ends.max()) + 1, dtype=torch.bool)
            self._wanted[ends[mine]] = True
            self._dates = dict(zip(ends[mine].tolist(), where["date"][mine.numpy()], strict=True))
        else:
            self._ticker = None

    def _keep_output(self, net, args, output) -> None:
        out = output[0] if isinstance(output, tuple) else output  # net(x) -> (outputs per step, state)
        self._output = out  # outputs at every step: _collect picks the scored ones, as in Forecaster

    def _collect(self, pl_module, batch: dict) -> None:
        output, self._output = self._output, None
        if not self._active or sum(len(p[0]) for p in self._parts) >= self.max_points:
            return
        rows = batch["row"].cpu()
        keep = self._wanted[rows] if self._wanted is not None else torch.ones(len(rows), dtype=torch.bool)
        if not keep.any():
            return
        mask = keep.to(batch["x"].device)
        loc, scale, y = batch["y_loc"][mask], batch["y_scale"][mask], batch["y"][mask]
        y = y[:, -1] if y.dim() == 3 else y  # dense targets: the window's last step
        if output is not None:
            output = stream.scored(output, batch)  # each window's last step, or stream mode's `at` steps
        head = getattr(pl_module, "head", None)
        bands = {}
        if output is not None and len(output) == len(mask):
            if head is None:
                forecast = output[mask] * scale + loc
            else:
                params = head.to_original(head(output[mask]), loc, scale)
        elif head is None:  # no `net` to hook, or it ran on something else: a forward pass of our own
            forecast = pl_module(batch["x"][mask]) * scale + loc
        else:
            params = head.to_original(pl_module.distribution(batch["x"][mask]), loc, scale)
        if head is not None:
            forecast = head.point(params)
            if head.family != "point":
                dist = pl_module.as_forecast(params[:, :1])
                bands = {a: [torch.from_numpy(b[:, 0]) for b in dist.central(a)] for a in calibration.INTERVALS}
        part = (rows[keep], forecast[:, 0].float().cpu(), (y * scale + loc)[:, 0].float().cpu())
        self._parts.append((*part, bands))

    def _draw(self, trainer, stage: str) -> None:
        self._remove_hook()
        if not self._active:
            return
        if not self._parts:
            rank_zero_warn(f"ForecastPlot: no {stage} windows of ticker {self._ticker!r}; nothing drawn")
            return
        rows, forecast, actual = (torch.cat(column) for column in list(zip(*self._parts, strict=True))[:3])
        order = rows.argsort()
        rows, forecast, actual = rows[order].numpy(), forecast[order].numpy(), actual[order].numpy()
        bands = {  # level -> (lower, upper), in the same order as rows
            a: tuple(torch.cat([p[3][a][i] for p in self._parts])[order].numpy() for i in (0, 1))
            for a in self._parts[0][3]
        }
        x = [self._dates[r] for r in rows.tolist()] if self._dates is not None else rows
        mae = float(np.mean(np.abs(forecast - actual)))
        name = f"{self._ticker}, " if self._ticker else ""
        title = f"{stage}: {name}step {trainer.global_step}, MAE {mae:.3g} (original units)"
        ylabel = getattr(trainer.datamodule, "target", None) or "target"
        xlabel = "forecast date" if self._dates is not None else "row"
        self.drawn = dict(ticker=self._ticker, rows=rows, x=x, forecast=forecast, actual=actual, bands=bands)
        figure = dict(self.drawn, title=title, xlabel=xlabel, ylabel=ylabel)
        self.draw_later(draw_forecasts, tensorboard(trainer), f"forecast/{stage}", trainer.global_step, figure)

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._output = None, None

    def on_exception(self, trainer, pl_module, exception):
        self._remove_hook()
        super().on_exception(trainer, pl_module, exception)

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start(trainer, pl_module, "val")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect(pl_module, batch)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._draw(trainer, "val")

    def on_test_epoch_start(self, trainer, pl_module):
        self._start(trainer, pl_module, "test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect(pl_module, batch)

    def on_test_epoch_end(self, trainer, pl_module):
        self._draw(trainer, "test")


def draw_forecasts(writer, tag: str, step: int, drawn: dict) -> None:
    """The figure of ForecastPlot: forecast and actual against time, the head's bands if any."""
    from matplotlib.figure import Figure  # imported when first drawn: runs without figures never pay for it

    fig = Figure(figsize=(8, 3.5))  # no layout engine: it would double the drawing time
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.18)
    ax = fig.add_subplot()
    x = drawn["x"]
    for level, (lo, hi) in sorted(drawn["bands"].items(), reverse=True):
        ax.fill_between(x, lo, hi, color="tab:orange", alpha=0.15 if level > 0.5 else 0.3, lw=0,
                        label=f"{level:.0%} interval")  # fmt: skip
    ax.plot(x, drawn["actual"], lw=1, label="actual")
    ax.plot(x, drawn["forecast"], lw=1, label="forecast")
    ax.set_xlabel(drawn["xlabel"])
    ax.set_ylabel(drawn["ylabel"])
    ax.set_title(drawn["title"])
    ax.legend(loc="upper left")
    writer.add_figure(tag, fig, step)
