"""The job of `python -m forecasting fit --config configs/volatility.yaml`, as a plain PyTorch script.

The reference for `whole_run.py`: what a careful user would write by hand, end to end, in one process.
Same file (data/stocks.csv), same features (log return, log Garman-Klass variance, log volume change)
and target (next day's log GK variance), same split by the date of each window's target (train before
2009-01-01, val before 2011-01-01), a standard scaler (mean, population std) fitted on the rows before
the validation start only, windows of 64 days within one ticker, the same 2 x 64 LSTM (dropout 0.1,
orthogonal recurrent weights, Xavier input weights, forget-gate bias 1) and linear head, MSE on the
last step, AdamW (lr 1e-3, weight decay 1e-4), gradient-norm clipping at 1.0, batch 64 reshuffled
each epoch, ReduceLROnPlateau (factor 0.5, patience 3), seed 42, a validation pass every epoch
(val loss and MAE in original units) and the best weights saved with torch.save when val loss improves.

Reading and the feature transforms are the template's own pure functions: `forecasting.data.io`
(`read_prices`: the same validation and split adjustment) and `forecasting.data.features`; they
import numpy and pandas only, never Lightning, sklearn or the data module (which would charge
Lightning's import to this side). Everything else (scaling, splits, windows, the loop) is written
here in numpy / torch. `--import-times` prints what each import costs.

Not done here, done by the template: baselines (naive, mean, HAR) and skill scores, QLIKE, the
persistence checks, TensorBoard, diagnostics, a last.ckpt, early stopping (the timings disable it).

    python benchmarks/plain_fit.py --epochs 3
"""

import gc
import os
import time

T0 = time.perf_counter()
# PLAIN_FIT_FREEZE_GC=1: the start-up trick of `python -m forecasting` (forecasting/entry.py) here too,
# no garbage collection while importing, then gc.freeze(); whole_run.py --plain-freeze-gc.
FREEZE_GC = os.environ.get("PLAIN_FIT_FREEZE_GC") == "1"
if FREEZE_GC:
    gc.disable()
import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

T_TORCH = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `forecasting.data`
from forecasting.data import features as F  # noqa: E402
from forecasting.data.io import read_prices  # noqa: E402

if FREEZE_GC:
    gc.freeze()
    gc.enable()

T_DATA = time.perf_counter()

FEATURES, TARGET = ["log_return", "gk_log_var", "log_volume_change"], "gk_log_var"
COLUMNS = {c: c for c in ("open", "high", "low", "close", "volume")}
WINDOW, VAL_START, TEST_START = 64, np.datetime64("2009-01-01"), np.datetime64("2011-01-01")


def load(path: str):
    """Scaled inputs (rows, 3), scaled next-day targets (rows,), target loc/scale, and the window
    ends of each split (a window ending on row t forecasts row t + 1 of the same ticker)."""
    frame = read_prices(path, "date", "ticker", COLUMNS, adjust_column="adj_close")
    parts = [np.stack([F.compute(rows, n) for n in FEATURES], 1) for _, rows in frame.groupby("ticker", sort=False)]
    x = np.concatenate(parts)
    ticker = frame["ticker"].to_numpy()
    time_ = frame["time"].to_numpy()
    train_rows = time_ < VAL_START
    mean, std = np.nanmean(x[train_rows], 0), np.nanstd(x[train_rows], 0)
    raw_target = x[:, FEATURES.index(TARGET)]
    t_loc, t_scale = mean[FEATURES.index(TARGET)], std[FEATURES.index(TARGET)]
    x = (x - mean) / std
    # Target of the window ending on row t: row t + 1, same ticker.
    y = np.full(len(x), np.nan)
    same = ticker[1:] == ticker[:-1]
    y[:-1] = np.where(same, (raw_target[1:] - t_loc) / t_scale, np.nan)
    target_day = np.full(len(x), np.datetime64("NaT"), dtype=time_.dtype)
    target_day[:-1] = np.where(same, time_[1:], np.datetime64("NaT"))
    # A window ends on row t if rows t-63..t are one ticker and hold no NaN (the first row of each
    # ticker has no return yet).
    bad = np.concatenate([[0], np.cumsum(np.isnan(x).any(1))])
    t = np.arange(WINDOW - 1, len(x))
    ok = (bad[t + 1] - bad[t + 1 - WINDOW] == 0) & (ticker[t] == ticker[t + 1 - WINDOW]) & ~np.isnan(y[t])
    ends, day = t[ok], target_day[t[ok]]
    splits = {"train": ends[day < VAL_START], "val": ends[(day >= VAL_START) & (day < TEST_START)]}
    x = torch.from_numpy(x.astype(np.float32))
    return x, torch.from_numpy(y.astype(np.float32)), float(t_loc), float(t_scale), splits


class Net(nn.Module):
    def __init__(self, n_features=3, hidden=64, layers=2, dropout=0.1, forget_bias=1.0):
        super().__init__()
        self.rnn = nn.LSTM(n_features, hidden, layers, batch_first=True, dropout=dropout)
        self.head = nn.Linear(hidden, 1)
        for name, p in self.rnn.named_parameters():
            for block in p.data.split(hidden):  # one block per gate
                if name.startswith("weight_ih"):
                    nn.init.xavier_uniform_(block)
                elif name.startswith("weight_hh"):
                    nn.init.orthogonal_(block)
            if name.startswith("bias"):
                nn.init.zeros_(p)
                if name.startswith("bias_ih"):
                    p.data[hidden : 2 * hidden] = forget_bias  # gates (i, f, g, o)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])[:, 0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--data", default="data/stocks.csv")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "plain_best.pt"), help="best weights")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--import-times", action="store_true", help="print the import and set-up times")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    t_setup = time.perf_counter()
    x, y, t_loc, t_scale, splits = load(args.data)
    windows = x.unfold(0, WINDOW, 1).transpose(1, 2)  # view: windows[s] = rows s..s+63

    def batches(ends, shuffle: bool, epoch: int):
        ends = torch.from_numpy(ends)
        if shuffle:
            ends = ends[torch.randperm(len(ends), generator=torch.Generator().manual_seed(args.seed + epoch))]
        for i in range(0, len(ends), 64):
            e = ends[i : i + 64]
            yield windows[e - (WINDOW - 1)], y[e]

    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    loss_fn, best = nn.MSELoss(), float("inf")
    t_train = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        total, n = 0.0, 0
        for xb, yb in batches(splits["train"], True, epoch):
            loss = loss_fn(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            total, n = total + loss.detach() * len(yb), n + len(yb)
        net.eval()
        val_sum, abs_sum, m = 0.0, 0.0, 0
        with torch.no_grad():
            for xb, yb in batches(splits["val"], False, epoch):
                pred = net(xb)
                val_sum += float(loss_fn(pred, yb)) * len(yb)
                abs_sum += float((pred - yb).abs().sum()) * t_scale
                m += len(yb)
        val_loss = val_sum / m
        sched.step(val_loss)
        if val_loss < best:
            best = val_loss
            torch.save(net.state_dict(), args.out)
        print(f"epoch {epoch}: train loss {float(total) / n:.4f}  val loss {val_loss:.4f}  val MAE {abs_sum / m:.4f}")
    done = time.perf_counter()
    print(f"{len(splits['train'])} train / {len(splits['val'])} val windows; best val loss {best:.4f}")
    if args.import_times:
        print(
            f"import numpy+torch {T_TORCH - T0:.2f} s, forecasting.data (pandas) {T_DATA - T_TORCH:.2f} s, "
            f"data set-up {t_train - t_setup:.2f} s, training {done - t_train:.2f} s"
        )


if __name__ == "__main__":
    main()
