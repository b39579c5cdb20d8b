"""The template next to NeuralForecast's LSTM and Darts' BlockRNNModel / RNNModel: same data, window,
horizon, network size, batch size and epochs; training windows per second and test MAE.

    python -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0      # CPU torch first
    /tmp/peers/bin/pip install neuralforecast darts && /tmp/peers/bin/pip install -e .
    /tmp/peers/bin/python benchmarks/peers.py                  # about 15 minutes on 2 cores
    /tmp/peers/bin/python benchmarks/peers.py --epochs 20 --repeats 5

(The peers stay out of the template's environment: they pin their own lightning, ray, numba, ...)

Data: the default example (configs/volatility.yaml): AAPL, IBM and MSFT, next-day log Garman-Klass
variance from 64 days of (log return, log GK variance, log volume change), splits by the date of
the target (train before 2009, val 2009-2010, test 2011 on). Every library gets the SAME scaled
values: the template's data module computes the features and scales them with statistics of the
training rows; the peers receive those scaled series (their own scalers off) and their forecasts
are unscaled with the same statistics. Test MAE is in the target's original units (log variance)
over the same test targets (the count is printed), with the weights after the last epoch (no
checkpoint selection, for all).

Throughput is training windows per second of the training loop (from `on_train_start` to
`on_train_end` of each library's Lightning Trainer: batches, optimiser steps and the per-epoch
validation each library runs; not the data preparation before it).

Fairness: all libraries share one process, so first-use costs (lazy imports, kernel selection,
allocator growth) would land on whichever runs first. Each library first runs a one-epoch warm-up
that is not timed; then every repeat runs all of them in an order rotated by one place (each
library goes first once every `len(libraries)` repeats). The table gives the median windows/s over
the repeats with min-max, the median of the per-repeat ratios to the template, and each library's
test MAE (median over repeats; the runs are seeded, so the spread is the non-determinism of
the kernels).
"""

import argparse
import contextlib
import copy
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings

import lightning as L
import numpy as np
import pandas as pd
import torch
from common import begin

from forecasting.cli import main

try:
    import darts
    import neuralforecast
    import pytorch_lightning as pl
except ImportError as err:
    PEERS_MISSING = f"{err.name} is not installed"
else:
    PEERS_MISSING = None

WINDOW, HIDDEN, LAYERS, DROPOUT, BATCH, LR, WEIGHT_DECAY, CLIP, SEED = 64, 64, 2, 0.1, 64, 1e-3, 1e-4, 1.0, 42
NOTES = """Differences that remain:
- Initialisation: the template's default (orthogonal recurrent weights, Xavier input weights, forget-gate
  bias 1); the peers use PyTorch's default.
- LR schedule: the template's config halves the LR after 3 epochs without a better val/loss
  (ReduceLROnPlateau); the peers keep it constant (NeuralForecast: num_lr_decays=-1).
- Epochs: the template and Darts draw each training window once per epoch; NeuralForecast samples 64
  windows per step at random from the 3 series and trains epochs x ceil(windows / 64) steps.
- Inputs: the template, NeuralForecast (y + 2 historic exogenous) and Darts BlockRNNModel (target + 2 past
  covariates) see the same 3 series. Darts RNNModel takes only future covariates: it sees the target alone,
  and trains with a loss at every step of 65-step sequences (its design), not only the last.
- Per epoch the template also computes its validation metrics and baselines, writes TensorBoard events and
  two checkpoints and runs its diagnostics (not in the "diagnostics off" row); the peers compute the
  validation loss only, with no logger and no checkpoints. deterministic: true in the template only.
- Heads: a linear layer on the last hidden state in all (NeuralForecast decoder_layers=1; Darts default).
- Progress bars off in all.
- The plain PyTorch loop is no library: the template's network with the same initial weights, the same
  windows, AdamW and clipping, a forward pass over the validation windows each epoch, nothing else (no
  LR schedule, metrics, logging or checkpoints). Every library runs the same nn.LSTM kernels, so its
  windows/s is about the most any of them can reach."""
DIAGNOSTICS = tuple(f"forecasting.callbacks.{m}" for m in ("nonfinite_guard", "grad", "gate", "forecast", "hparams"))
INSTALL = (
    "python -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0 && "
    "/tmp/peers/bin/pip install neuralforecast darts && /tmp/peers/bin/pip install -e ."
)


def quiet():
    """Progress bars, model summaries and hints draw to /dev/null."""
    null = open(os.devnull, "w")  # noqa: SIM115  closed by the ExitStack
    stack = contextlib.ExitStack()
    stack.enter_context(null)
    stack.enter_context(contextlib.redirect_stdout(null))
    stack.enter_context(contextlib.redirect_stderr(null))
    return stack


def loop_timer(base):
    """A callback of the given Lightning flavour (lightning or pytorch_lightning) that times the training loop.
    The time goes to a class attribute: NeuralForecast deep-copies the callbacks it is given."""

    class LoopTimer(base):
        seconds: list[float] = []

        def on_train_start(self, trainer, pl_module):
            type(self).start = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            type(self).seconds.append(time.perf_counter() - type(self).start)

    return LoopTimer()


class Data:
    """The template's data module, and the same scaled values as one long frame for the peers."""

    def __init__(self, log_dir: str, epochs: int):
        self.log_dir, self.epochs = log_dir, epochs
        cli = self.template_cli()
        dm = cli.datamodule
        dm.setup("fit")
        self.n_train = len(dm.dataset("train"))
        frame = dm.frames["fit"]
        x = dm.tensors(frame)[0].numpy()
        names = dm.features
        self.target = names.index(dm.target)
        self.loc, self.scale = dm.stats["target_center"][0], dm.stats["target_scale"][0]
        long = pd.DataFrame({"unique_id": frame["ticker"].to_numpy(), "time": frame["time"].to_numpy()})
        for i, name in enumerate(names):
            long[name] = x[:, i]
        long = long.dropna().reset_index(drop=True)  # each ticker's first row: no return yet (so no window)
        long["ds"] = long.groupby("unique_id").cumcount()  # trading days have gaps: integer time steps
        long["y"] = long[dm.target]
        self.long, self.exog = long, [n for n in names if n != dm.target]
        val, test = (np.datetime64(dm.stats[k]) for k in ("val_start", "test_start"))
        per_ticker = long[long["unique_id"] == long["unique_id"].iloc[0]]
        self.val_size = int(((per_ticker["time"] >= val) & (per_ticker["time"] < test)).sum())
        self.test_size = int((per_ticker["time"] >= test).sum())
        self.first_val = int(per_ticker["ds"][per_ticker["time"] >= val].iloc[0])
        self.first_test = int(per_ticker["ds"][per_ticker["time"] >= test].iloc[0])
        self.actual = {(u, d): y for u, d, y in zip(long["unique_id"], long["ds"], long["y"], strict=True)}

    def template_cli(self):
        return main(
            [
                "--config", "configs/volatility.yaml", f"--trainer.logger.init_args.save_dir={self.log_dir}",
                f"--trainer.max_epochs={self.epochs}", "--trainer.enable_progress_bar=false",
                f"--early_stopping.patience={self.epochs + 1}",
            ],
            run=False,
        )  # fmt: skip

    def mae(self, forecasts: dict) -> tuple[float, int]:
        """MAE in original units over the test targets: forecasts maps (ticker, ds) -> scaled forecast."""
        keys = [k for k in forecasts if k[1] >= self.first_test]
        errors = [abs(forecasts[k] - self.actual[k]) * self.scale for k in keys]
        return float(np.mean(errors)), len(keys)


def run_template(data: Data, diagnostics: bool = True) -> dict:
    cli = data.template_cli()
    if not diagnostics:  # drop the config's TensorBoard diagnostics (forecasting.callbacks.*, not the writer)
        keep = [c for c in cli.trainer.callbacks if not type(c).__module__.startswith(DIAGNOSTICS)]
        cli.trainer.callbacks[:] = keep
    timer = loop_timer(L.Callback)
    cli.trainer.callbacks.append(timer)
    with quiet():
        cli.trainer.fit(cli.model, cli.datamodule)
    forecasts = forecasts_on_test(data, cli, cli.model.eval())
    return {"seconds": sum(type(timer).seconds), "windows": data.n_train * data.epochs, "forecasts": forecasts}


def forecasts_on_test(data: Data, cli, net) -> dict:
    """(ticker, ds) -> scaled forecast of every test window, from `net` on the template's test windows."""
    ds = cli.datamodule.dataset("test")
    batch = ds.__getitems__(list(range(len(ds))))
    with torch.no_grad():
        pred = net(batch["x"])[:, 0].numpy()
    # The window ending on row r forecasts row r + 1: key it by that row's (ticker, ds).
    frame = cli.datamodule.frames["fit"]
    target_rows = batch["row"].numpy() + 1
    lookup = data.long.set_index(["unique_id", "time"])["ds"]
    keys = zip(frame["ticker"].to_numpy()[target_rows], frame["time"].to_numpy()[target_rows], strict=True)
    return {(u, int(lookup[(u, t)])): float(p) for (u, t), p in zip(keys, pred, strict=True)}


def run_plain(data: Data) -> dict:
    """No library: the template's network (same initial weights), windows, AdamW, clipping and a
    validation pass per epoch in a ten-line PyTorch loop. What the compute alone allows: no loop of
    any library around the same nn.LSTM can be much faster than this."""
    cli = data.template_cli()
    dm, net = cli.datamodule, cli.model.net
    dm.setup("fit")
    train, val = dm.dataset("train"), dm.dataset("val")
    optimiser = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for _ in range(data.epochs):
        net.train()
        for index in torch.randperm(len(train), generator=generator).split(BATCH):
            batch = train.__getitems__(index)
            loss = torch.nn.functional.mse_loss(net(batch["x"])[0][:, -1], batch["y"])
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
            optimiser.step()
        net.eval()
        with torch.no_grad():
            for index in torch.arange(len(val)).split(BATCH):
                net(val.__getitems__(index)["x"])
    seconds = time.perf_counter() - start
    forecasts = forecasts_on_test(data, cli, lambda x: net(x)[0][:, -1])
    return {"seconds": seconds, "windows": data.n_train * data.epochs, "forecasts": forecasts}


def run_neuralforecast(data: Data) -> dict:
    from neuralforecast import NeuralForecast
    from neuralforecast.losses.pytorch import MSE
    from neuralforecast.models import LSTM

    steps_per_epoch = -(-data.n_train // BATCH)
    timer = loop_timer(pl.Callback)
    model = LSTM(
        h=1, input_size=WINDOW, encoder_hidden_size=HIDDEN, encoder_n_layers=LAYERS, encoder_dropout=DROPOUT,
        decoder_layers=1,  # one linear layer from the last hidden state, like the template's head
        hist_exog_list=data.exog, loss=MSE(), valid_loss=MSE(), scaler_type="identity",  # inputs already scaled
        batch_size=3, windows_batch_size=BATCH,  # all 3 series per step, 64 windows sampled from them
        max_steps=data.epochs * steps_per_epoch, val_check_steps=steps_per_epoch, learning_rate=LR,
        optimizer=torch.optim.AdamW, optimizer_kwargs={"weight_decay": WEIGHT_DECAY}, gradient_clip_val=CLIP,
        random_seed=SEED, enable_progress_bar=False, enable_model_summary=False, logger=False,
        enable_checkpointing=False, callbacks=[timer], accelerator="cpu",
    )  # fmt: skip
    nf = NeuralForecast(models=[model], freq=1)
    df = data.long[["unique_id", "ds", "y", *data.exog]]
    with quiet():
        cv = nf.cross_validation(df, val_size=data.val_size, test_size=data.test_size, n_windows=None, refit=False)
    forecasts = {(u, int(d)): float(p) for u, d, p in zip(cv["unique_id"], cv["ds"], cv["LSTM"], strict=True)}
    return {"seconds": sum(type(timer).seconds), "windows": model.max_steps * BATCH, "forecasts": forecasts}


def darts_series(data: Data):
    from darts import TimeSeries

    series, covariates = [], []
    for _, rows in data.long.groupby("unique_id", sort=False):
        rows = rows.set_index("ds")
        series.append(TimeSeries.from_dataframe(rows, value_cols="y"))
        covariates.append(TimeSeries.from_dataframe(rows, value_cols=data.exog))
    return series, covariates


def run_darts(data: Data, kind: str) -> dict:
    from darts.models import BlockRNNModel, RNNModel

    series, covariates = darts_series(data)
    train = [s[: data.first_val] for s in series]
    val = [s[data.first_val - WINDOW : data.first_test] for s in series]  # inputs may look back, targets in val
    timer = loop_timer(pl.Callback)
    common = dict(
        hidden_dim=HIDDEN, n_rnn_layers=LAYERS, dropout=DROPOUT, batch_size=BATCH, n_epochs=data.epochs,
        input_chunk_length=WINDOW, loss_fn=torch.nn.MSELoss(), optimizer_cls=torch.optim.AdamW,
        optimizer_kwargs={"lr": LR, "weight_decay": WEIGHT_DECAY}, random_state=SEED,
        pl_trainer_kwargs={"gradient_clip_val": CLIP, "accelerator": "cpu", "enable_progress_bar": False,
                           "enable_model_summary": False, "callbacks": [timer]},
    )  # fmt: skip
    if kind == "block":
        model = BlockRNNModel(model="LSTM", output_chunk_length=1, **common)
        fit = {"past_covariates": covariates, "val_past_covariates": covariates}
    else:  # RNNModel takes future covariates only: the target alone, with a loss at every step
        model = RNNModel(model="LSTM", training_length=WINDOW + 1, **common)
        fit = {}
    with quiet():
        model.fit(train, val_series=val, verbose=False, **fit)
        hist = model.historical_forecasts(
            series, past_covariates=fit.get("past_covariates"), start=data.first_test, forecast_horizon=1,
            stride=1, retrain=False, last_points_only=True, verbose=False,
        )  # fmt: skip
    forecasts = {}
    for uid, h in zip(data.long["unique_id"].unique(), hist, strict=True):
        for d, p in zip(h.time_index, h.values()[:, 0], strict=True):
            forecasts[(uid, int(d))] = float(p)
    windows = sum(len(s) - WINDOW for s in train) * data.epochs
    return {"seconds": sum(type(timer).seconds), "windows": windows, "forecasts": forecasts}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of every library, order rotated each time")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    versions = [] if PEERS_MISSING else [f"neuralforecast {neuralforecast.__version__}", f"darts {darts.__version__}"]
    begin(*versions, threads=args.threads)
    if PEERS_MISSING:
        print(f"\nPeers not installed ({PEERS_MISSING}): only the template runs. Install them in their own "
              f"environment, not the template's:\n  {INSTALL}\n"
              "then run this script with /tmp/peers/bin/python.\n")  # fmt: skip
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_fabric", "darts"):
        logging.getLogger(name).setLevel(logging.ERROR)
    sys.argv = sys.argv[:1]  # LightningCLI would parse this script's flags too
    runners = {
        "template (forecasting)": run_template,
        "template, diagnostics off": lambda d: run_template(d, diagnostics=False),
        "plain PyTorch loop, no library (the ceiling)": run_plain,
        "NeuralForecast LSTM": run_neuralforecast,
        "Darts BlockRNNModel": lambda d: run_darts(d, "block"),
        "Darts RNNModel": lambda d: run_darts(d, "rnn"),
    }
    if PEERS_MISSING:
        runners = {k: v for k, v in runners.items() if k.startswith(("template", "plain"))}
    names = list(runners)
    results: dict[str, list[dict]] = {name: [] for name in runners}
    with tempfile.TemporaryDirectory() as tmp:
        data = Data(tmp, args.epochs)
        warm = copy.copy(data)
        warm.epochs = 1
        for name in names:  # first-use costs, untimed
            runners[name](copy.copy(warm))
            print(f"#   warm-up {name} done", flush=True)
        for r in range(args.repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                results[name].append(runners[name](copy.copy(data)))
                print(f"#   repeat {r + 1}: {name}: {results[name][-1]['seconds']:.1f} s", flush=True)

    print(f"\n{args.epochs} epochs, window {WINDOW}, horizon 1, {LAYERS} x {HIDDEN} LSTM, batch {BATCH}, "
          f"AdamW lr {LR:g}, clip norm {CLIP:g}; {data.n_train} training windows; one untimed warm-up per "
          f"library, then {args.repeats} repeats in rotated order: median (min-max)\n")  # fmt: skip
    print("| library | training windows/s | vs template (median of paired ratios) | test MAE (log variance) "
          "| test targets |")
    print("|:--|--:|--:|--:|--:|")
    speeds = {name: [r["windows"] / r["seconds"] for r in runs] for name, runs in results.items()}
    base = speeds["template (forecasting)"]
    for name, runs in results.items():
        s = speeds[name]
        ratio = statistics.median(a / b for a, b in zip(s, base, strict=True))
        maes = [data.mae(run["forecasts"]) for run in runs]
        mae = statistics.median(m for m, _ in maes)
        print(f"| {name} | {statistics.median(s):.0f} ({min(s):.0f}-{max(s):.0f}) | {ratio:.2f} | {mae:.4f} "
              f"| {maes[0][1]} |")
    print(f"\n{NOTES}\n\n# load average at the end {os.getloadavg()[0]:.1f}")
