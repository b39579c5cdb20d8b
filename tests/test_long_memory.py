"""The carried state really remembers: the latch task (forecasting/data/latch.py), whose answer
lies 300 steps back, is learned in stream mode (chunks of 32, state carried through each whole
series) and not by windowed full BPTT at window 64. The larger run: benchmarks/long_memory.py."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from forecasting.data.base import keep_batch
from forecasting.data.latch import latch
from forecasting.data.stream import StreamDataset, StreamSampler, eval_streams, runs
from forecasting.data.windows import WindowDataset, valid_ends
from forecasting.models.forecaster import Forecaster
from tests.nets import lstm

LAG = 300


def model(k):
    torch.manual_seed(0)
    net = lstm(hidden_sizes=16, num_layers=1, dropout=0.0)
    opt = lambda p: torch.optim.Adam(p, lr=0.01)  # noqa: E731
    return Forecaster(n_features=2, net=net, burn_in=8, tbptt_steps=k, gradient_clip_val=1.0, optimizer=opt)


def fit(m, loader, epochs):
    L.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, deterministic=True,
    ).fit(m, loader)  # fmt: skip


@pytest.mark.slow
def test_stream_mode_learns_a_300_step_dependency_that_64_day_windows_cannot():
    x, y, series, _ = latch(4, 3000, LAG, torch.Generator().manual_seed(1))
    vx, vy, vseries, scored = latch(4, 3000, LAG, torch.Generator().manual_seed(2))
    zero, one = torch.zeros(len(x)), torch.ones(len(x))
    clean = torch.zeros(len(vx), dtype=torch.bool)

    stream = StreamDataset(x, y, zero, one, runs(series, ~clean), k=32, lanes=8, seed=0)
    m = model(32)
    fit(m, DataLoader(stream, batch_size=1, sampler=StreamSampler(stream), collate_fn=keep_batch), epochs=60)
    val = eval_streams(vx, vy, zero, one, vseries, clean, scored)
    with torch.no_grad():
        batch = val.__getitems__(range(len(val)))
        stream_mse = float(((m.eval().head.point(m.forecasts(batch)[1]) - batch["y"]) ** 2).mean())

    windows = WindowDataset(x, y, zero, one, valid_ends(series, clean, 64), 64)
    w = model(None)
    fit(w, DataLoader(windows, batch_size=64, shuffle=True, collate_fn=keep_batch), epochs=1)
    ends = scored[scored - torch.searchsorted(vseries, vseries[scored]) >= 63]  # a whole window of history
    with torch.no_grad():
        batch = WindowDataset(vx, vy, zero, one, ends, 64).__getitems__(range(len(ends)))
        window_mse = float(((w.eval()(batch["x"]) - batch["y"]) ** 2).mean())

    # Targets are +-1 there: MSE 1 is knowing nothing (forecast 0), 0 is remembering the sign.
    assert stream_mse < 0.1, stream_mse
    assert window_mse > 0.8, window_mse
