"""Does stream mode's carried state really remember? The latch task (forecasting/data/latch.py):
the answer lies `lag` steps back. Stream mode (truncated BPTT in chunks of k, state carried
through each whole series) against windowed full BPTT at window 64, same network.

    python benchmarks/long_memory.py --lag 300
    python benchmarks/long_memory.py --lag 100 --lag 300 --lag 1000 --epochs 30

Prints the MSE at the scored steps (the step before each new pulse; 1.0 = knows nothing,
0 = remembers the sign), after each mode's training, and the seconds it took.
"""

import argparse
import time

import lightning as L
import torch
from common import begin, quiet
from torch.utils.data import DataLoader

from forecasting.data.base import keep_batch
from forecasting.data.latch import latch
from forecasting.data.stream import StreamDataset, StreamSampler, eval_streams, runs
from forecasting.data.windows import WindowDataset, valid_ends
from forecasting.models.forecaster import Forecaster
from forecasting.models.lstm import StackedRNN


def model(k: int | None, lr: float, hidden: int) -> Forecaster:
    def net(n_features, n_outputs):
        return StackedRNN(n_features, n_outputs, hidden_sizes=hidden, num_layers=1, dropout=0.0)

    return Forecaster(
        net=net, n_features=2, burn_in=8, tbptt_steps=k, gradient_clip_val=1.0,
        optimizer=lambda p: torch.optim.Adam(p, lr=lr),
    )  # fmt: skip


def data(lag: int, n_series: int, length: int, seed: int):
    x, y, series, scored = latch(n_series, length, lag, torch.Generator().manual_seed(seed))
    return x, y, series, scored, torch.zeros(len(x)), torch.ones(len(x))


def trainer(epochs: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip


def stream_mse(m: Forecaster, val) -> float:
    x, y, series, scored, zero, one = val
    streams = eval_streams(x, y, zero, one, series, torch.zeros(len(x), dtype=torch.bool), scored)
    m.eval()
    with torch.no_grad():
        batch = streams.__getitems__(range(len(streams)))
        return float(((m.head.point(m.forecasts(batch)[1]) - batch["y"]) ** 2).mean())


def window_mse(m: Forecaster, val, window: int) -> float:
    x, y, series, scored, zero, one = val
    keep = scored - torch.searchsorted(series, series[scored]) >= window - 1  # a whole window of history
    ds = WindowDataset(x, y, zero, one, scored[keep], window)
    m.eval()
    with torch.no_grad():
        batch = ds.__getitems__(range(len(ds)))
        return float(((m(batch["x"]) - batch["y"]) ** 2).mean())


def run_stream(lag, k, lanes, epochs, lr, hidden, train, val, seed=0) -> tuple[float, float, list[float]]:
    torch.manual_seed(seed)
    x, y, series, _, zero, one = train
    ds = StreamDataset(x, y, zero, one, runs(series, torch.ones(len(x), dtype=torch.bool)), k, lanes, seed)
    m, curve = model(k, lr, hidden), []
    start = time.perf_counter()
    for epoch in range(epochs):  # one epoch per fit call: the val curve between them
        sampler = StreamSampler(ds)
        loader = DataLoader(ds, batch_size=1, sampler=sampler, collate_fn=keep_batch)
        sampler.set_epoch(epoch)
        trainer(1).fit(m, loader)
        curve.append(stream_mse(m, val))
    return curve[-1], time.perf_counter() - start, curve


def run_windows(window, epochs, lr, hidden, train, val, batch_size=64, seed=0) -> tuple[float, float]:
    torch.manual_seed(seed)
    x, y, series, _, zero, one = train
    ds = WindowDataset(x, y, zero, one, valid_ends(series, torch.zeros(len(x), dtype=torch.bool), window), window)
    m = model(None, lr, hidden)
    start = time.perf_counter()
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, collate_fn=keep_batch)
    trainer(epochs).fit(m, loader)
    return window_mse(m, val, window), time.perf_counter() - start


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--lag", type=int, action="append")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lanes", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20, help="stream mode's epochs")
    parser.add_argument("--window-epochs", type=int, default=2, help="windowed mode's (each is ~window x dearer)")
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--length", type=int, default=3000)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    begin()
    quiet()
    print("| lag | mode | MSE at scored steps | train s | first epoch < 0.1 | every 10th epoch |")
    print("|--:|:--|--:|--:|--:|:--|")
    for lag in args.lag or [300]:
        train = data(lag, args.series, args.length, seed=1)
        val = data(lag, 4, args.length, seed=2)
        mse, secs, curve = run_stream(lag, args.k, args.lanes, args.epochs, args.lr, args.hidden, train, val)
        shown = " ".join(f"{c:.2f}" for c in curve[9::10])
        first = next((i + 1 for i, c in enumerate(curve) if c < 0.1), "never")
        mode = f"stream k={args.k}, {args.lanes} lanes, {args.epochs} epochs"
        print(f"| {lag} | {mode} | {mse:.3f} | {secs:.0f} | {first} | {shown} |")
        mse, secs = run_windows(64, args.window_epochs, args.lr, args.hidden, train, val)
        mode = f"windowed 64, full BPTT, {args.window_epochs} epochs"
        print(f"| {lag} | {mode} | {mse:.3f} | {secs:.0f} | | |", flush=True)
