"""Data pipeline: build time and peak memory of the data module on a long synthetic series, and
time per batch, against the common approach of materialising every window in one NumPy array.

    python benchmarks/data_pipeline.py                        # 2,000,000 rows x 8 features, window 256: ~2 min
    python benchmarks/data_pipeline.py --rows 200000 --naive-rows 100000 200000   # quick
    python benchmarks/data_pipeline.py --rows 5000000 --naive-rows 100000 200000 400000

The synthetic file (Parquet) has `--rows` rows: `rows / 10,000` tickers of 10,000 business days
each, random-walk OHLCV prices plus 4 extra numeric columns. The 8 features are the 4 price
transforms (log_return, gk_log_var, log_range, log_volume_change) and the 4 extra columns used
raw; the target is gk_log_var, window `--window`, horizon 1, the default splits (70% / 15% / 15%).

Each build runs in a fresh process, so peak memory is that process's own high-water mark of
resident memory (Linux VmHWM) minus its resident memory before the build (Python, torch, pandas
imported): everything the build allocated at its peak, NumPy, pandas, Arrow and torch alike.
- template: `PriceDataModule(...).setup("fit")` and its train/val/test data sets, as `fit` does.
- + materialise windows: the same, then every window of every split copied into one
  (windows, window, features) float32 array, which is what `np.stack([x[i - w + 1 : i + 1] ...])`
  or `sliding_window_view(...)[ends].copy()` give. It needs windows x window x features x 4 bytes,
  so it only runs for the `--naive-rows` sizes; for the others the table shows that size, computed.

Batch fetch: the training loader of the data module (`EpochRandomSampler`, one gather per batch,
no worker processes) versus a map-style Dataset over the materialised array with the default
collate (one `__getitem__` per window, then `torch.stack`), alternating, next to one training step
of the default network (2 x 64 LSTM) on a batch of the same shape.
"""

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import begin

FEATURES = ["log_return", "gk_log_var", "log_range", "log_volume_change", "x0", "x1", "x2", "x3"]
COLUMNS = {c: c for c in ["open", "high", "low", "close", "volume", "x0", "x1", "x2", "x3"]}
DAYS = 10_000  # per ticker


def write_synthetic(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    tickers, days = max(1, rows // DAYS), min(rows, DAYS)
    dates = pd.bdate_range("1980-01-01", periods=days).to_numpy()
    close = 100 * np.exp(np.cumsum(0.01 * rng.standard_normal((tickers, days)), axis=1)).ravel()
    spread = 0.01 * close * np.abs(rng.standard_normal(close.shape)) + 1e-3 * close
    frame = {
        "date": np.tile(dates, tickers),
        "ticker": np.repeat([f"T{i:04d}" for i in range(tickers)], days),
        "open": close * (1 + 0.002 * rng.standard_normal(close.shape)),
        "high": close + spread,
        "low": close - spread,
        "close": close,
        "volume": rng.lognormal(13, 0.5, close.shape),
    }
    frame["open"] = np.clip(frame["open"], frame["low"], frame["high"])
    for i in range(4):
        frame[f"x{i}"] = rng.standard_normal(close.shape)
    pd.DataFrame(frame).to_parquet(path)


def rss_kb(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process in kB, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def build(path: str, window: int, materialise: bool, queue) -> None:
    """Child process: build the data module (and materialise its windows), report time and memory."""
    import pyarrow.parquet  # noqa: F401  imported before the baseline: a fixed cost, not the build's
    import sklearn.preprocessing  # noqa: F401

    from forecasting.data.datamodule import PriceDataModule

    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current size
    base = rss_kb("VmRSS")
    start = time.perf_counter()
    dm = PriceDataModule(path=path, columns=COLUMNS, features=FEATURES, target="gk_log_var", window=window)
    dm.setup("fit")
    datasets = {s: dm.dataset(s) for s in ("train", "val", "test")}
    seconds = time.perf_counter() - start
    out = {"seconds": seconds, "windows": sum(len(d) for d in datasets.values())}
    # What the data sets hold: one (rows, F) tensor per data set plus targets and baselines.
    held = {id(t.untyped_storage()): t.untyped_storage().nbytes() for d in datasets.values() for t in tensors(d)}
    out["tensor_mb"] = sum(held.values()) / 2**20
    out["frame_mb"] = dm.frames["fit"].memory_usage(deep=True).sum() / 2**20
    if materialise:
        start = time.perf_counter()
        n = sum(len(d) for d in datasets.values())
        windows = np.empty((n, window, len(FEATURES)), dtype=np.float32)  # one allocation, filled in place
        offset = 0
        for d in datasets.values():
            out_view = torch.from_numpy(windows[offset : offset + len(d)])
            torch.index_select(d.x, 0, d.ends - (d.window - 1), out=out_view)
            offset += len(d)
        out["materialise_seconds"] = time.perf_counter() - start
        out["materialised_mb"] = windows.nbytes / 2**20
    out["peak_mb"] = (rss_kb("VmHWM") - base) / 1024
    out["rows"] = len(dm.frames["fit"])
    queue.put(out)


def tensors(dataset) -> list[torch.Tensor]:
    return [dataset.x, dataset.y, dataset.target_loc, dataset.target_scale, *dataset.baselines.values()]


def in_child(*args) -> dict:
    ctx = mp.get_context("spawn")  # a fresh process: its peak memory is this build's alone
    queue = ctx.Queue()
    proc = ctx.Process(target=build, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def lean_build(path: str, window: int, cache_dir: str, queue, rank: int = 0, world: int = 1, init: str = "") -> None:
    """Child process (one DDP rank when world > 1): setup('fit') and the three data sets; time and peak memory."""
    import pyarrow.parquet  # noqa: F401  imported before the baseline: a fixed cost, not the build's
    import torch.distributed as dist

    from forecasting.data.datamodule import PriceDataModule

    if os.environ.get("BENCH_NO_GARCH"):  # --no-garch: the set-up without the per-ticker GARCH fits
        from forecasting import risk_baselines

        risk_baselines.MIN_GARCH_RETURNS = 1 << 62  # every ticker "too short": no fit
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    base = rss_kb("VmRSS")
    start = time.perf_counter()
    dm = PriceDataModule(path=path, columns=COLUMNS, features=FEATURES, target="gk_log_var", window=window,
                         cache_dir=cache_dir, shard_by_rank=world > 1)  # fmt: skip
    dm.setup("fit")
    windows = sum(len(dm.dataset(s)) for s in ("train", "val", "test"))
    queue.put({"rank": rank, "seconds": time.perf_counter() - start, "peak_mb": (rss_kb("VmHWM") - base) / 1024,
               "rows": len(dm.frames["fit"]), "windows": windows})  # fmt: skip
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def lean_run(path: str, window: int, cache_dir: str, world: int) -> list[dict]:
    """Build in `world` fresh processes (one per rank); each reports its own peak."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"file://{cache_dir}/rendezvous-{time.time_ns()}"
    procs = [
        ctx.Process(target=lean_build, args=(path, window, cache_dir, queue, r, world, init)) for r in range(world)
    ]
    for p in procs:
        p.start()
    out = sorted((queue.get() for _ in procs), key=lambda r: r["rank"])
    for p in procs:
        p.join()
    return out


def big_table(rows: int, csv_rows: int, window: int, ranks: int) -> None:
    """Table 3: the lean path at `rows` (Parquet, as the CSV cache is) and a CSV of `csv_rows`, cold then cached."""
    f = len(FEATURES)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        if csv_rows:
            csv = Path(tmp) / f"synthetic_{csv_rows}.csv"
            frame_path = Path(tmp) / "tmp.parquet"
            write_synthetic(frame_path, csv_rows)
            pd.read_parquet(frame_path).to_csv(csv, index=False)
            frame_path.unlink()
            cache = str(Path(tmp) / "cache_csv")
            runs.append((csv_rows, "CSV, cold (parsed, cache written)", csv, cache, 1))
            runs.append((csv_rows, "CSV, cached (read from the Parquet cache)", csv, cache, 1))
        parquet = Path(tmp) / f"synthetic_{rows}.parquet"
        start = time.perf_counter()
        write_synthetic(parquet, rows)
        print(f"#   wrote {rows:,} rows ({os.path.getsize(parquet) / 2**20:.0f} MB Parquet) in "
              f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
        runs.append((rows, "Parquet (= the cache), 1 process", parquet, str(Path(tmp) / "cache"), 1))
        if ranks > 1:
            runs.append(
                (rows, f"Parquet (= the cache), {ranks} ranks, shard_by_rank", parquet, str(Path(tmp) / "cache"), ranks)
            )
        for n, label, path, cache, world in runs:
            Path(cache).mkdir(exist_ok=True)
            out = lean_run(str(path), window, cache, world)
            array_mb = n * f * 4 / 2**20
            for r in out:
                share = r["rows"] * f * 4 / 2**20
                lines.append(
                    f"| {n:,} | {label} | {r['rank'] if world > 1 else '-'} | {r['rows']:,} | {r['seconds']:.1f} "
                    f"| {r['peak_mb']:,.0f} | {r['peak_mb'] * 2**20 / (r['rows'] * f):.0f} | {share:,.0f} "
                    f"| {r['peak_mb'] / share:.1f} | {r['peak_mb'] / array_mb:.2f} |"
                )
            print(f"#   {label}: {[round(r['seconds'], 1) for r in out]} s", flush=True)
    print(f"\nTable 3: lean set-up (setup('fit') + train/val/test data sets), {f} features, window {window}; "
          "fresh process per run, peak = VmHWM minus resident memory before the build\n")  # fmt: skip
    print("| rows in file | source | rank | rows loaded | set-up s | peak MB | peak bytes / value loaded "
          "| float32 array of rows loaded MB | peak / that array | peak / whole file's float32 array |")  # fmt: skip
    print("|--:|:--|--:|--:|--:|--:|--:|--:|--:|--:|")
    print("\n".join(lines))


class PerWindow(torch.utils.data.Dataset):
    """The common approach: every window materialised up front, one `__getitem__` per window."""

    def __init__(self, windows: np.ndarray, targets: np.ndarray):
        self.windows, self.targets = windows, targets

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, i):
        return torch.from_numpy(self.windows[i]), torch.from_numpy(self.targets[i])


def time_batches(loader, n: int) -> list[float]:
    times, it = [], iter(loader)
    for _ in range(n):
        start = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - start)
    return times


def batch_fetch(path: str, window: int, batch_sizes: list[int], batches: int, repeats: int) -> list[tuple]:
    from forecasting.data.datamodule import PriceDataModule
    from forecasting.models.lstm import StackedRNN

    dm = PriceDataModule(path=path, columns=COLUMNS, features=FEATURES, target="gk_log_var", window=window)
    dm.setup("fit")
    train = dm.dataset("train")
    windows = train.x[train.ends - (window - 1)].numpy()  # materialised, as the common approach holds them
    targets = train.y[train.ends].numpy()
    net = StackedRNN(len(FEATURES), 1)
    opt = torch.optim.AdamW(net.parameters())
    rows = []
    for batch in batch_sizes:
        dm.batch_size = batch
        ours = dm.train_dataloader()
        common = torch.utils.data.DataLoader(PerWindow(windows, targets), batch_size=batch, shuffle=True)
        t_ours, t_common, t_step = [], [], []
        for _ in range(repeats):  # alternate, so machine noise hits both alike
            t_ours += time_batches(ours, batches)
            t_common += time_batches(common, batches)
            x, y = next(iter(ours))["x"], torch.zeros(batch, 1)
            for _ in range(2):
                start = time.perf_counter()
                loss = torch.nn.functional.mse_loss(net(x)[0][:, -1], y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                t_step.append(time.perf_counter() - start)
        rows.append((batch, statistics.median(t_ours), statistics.median(t_common), statistics.median(t_step)))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--naive-rows", type=int, nargs="*", default=[100_000, 200_000],
                        help="sizes whose windows are also materialised (rows x window x 8 x 4 bytes)")  # fmt: skip
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--batches", type=int, default=50, help="batches timed per loader and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--big-rows", type=int, default=0, help="Table 3 (lean set-up) at this many rows (0: skip)")
    parser.add_argument("--csv-rows", type=int, default=0, help="Table 3: a CSV of this many rows, cold and cached")
    parser.add_argument("--ranks", type=int, default=2, help="Table 3: also build with this many gloo ranks")
    parser.add_argument("--only-big", action="store_true", help="Table 3 alone")
    parser.add_argument("--no-garch", action="store_true",
                        help="Table 3 without the GARCH baseline's per-ticker fits")  # fmt: skip
    args = parser.parse_args()
    if args.no_garch:
        os.environ["BENCH_NO_GARCH"] = "1"  # read by the spawned builds
    begin(f"numpy {np.__version__}", f"pandas {pd.__version__}", threads=args.threads)
    if args.big_rows:
        big_table(args.big_rows, args.csv_rows, args.window, args.ranks)
        if args.only_big:
            raise SystemExit
    sizes = sorted({*args.naive_rows, args.rows})
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in sizes:
            path = str(Path(tmp) / f"synthetic_{rows}.parquet")
            start = time.perf_counter()
            write_synthetic(Path(path), rows)
            size_mb = os.path.getsize(path) / 2**20
            print(
                f"#   wrote {rows:,} rows ({size_mb:.0f} MB Parquet) in {time.perf_counter() - start:.1f} s", flush=True
            )
            ours = in_child(path, args.window, False)
            naive = in_child(path, args.window, True) if rows in args.naive_rows else None
            results.append((rows, ours, naive))
            print(f"#   built {rows:,} rows: {ours['seconds']:.1f} s, peak {ours['peak_mb']:.0f} MB", flush=True)
        fetch = batch_fetch(
            str(Path(tmp) / f"synthetic_{min(sizes)}.parquet"),
            args.window,
            args.batch_sizes,
            args.batches,
            args.repeats,
        )

    f = len(FEATURES)
    print(f"\nTable 1: building the data module, {f} features, window {args.window}, horizon 1 (fresh process each)\n")
    print("| rows | windows | template: build s | template: peak MB | peak bytes / (rows x features) "
          "| tensors held MB | frame held MB | + materialise windows: s | + materialise: peak MB "
          "| materialised array MB |")  # fmt: skip
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for rows, ours, naive in results:
        per = ours["peak_mb"] * 2**20 / (ours["rows"] * f)
        if naive:
            extra = f"{naive['seconds'] + naive['materialise_seconds']:.1f} | {naive['peak_mb']:.0f} | "
            extra += f"{naive['materialised_mb']:.0f}"
        else:
            extra = f"not run | not run | {ours['windows'] * args.window * f * 4 / 2**20:,.0f} (computed)"
        print(f"| {rows:,} | {ours['windows']:,} | {ours['seconds']:.1f} | {ours['peak_mb']:.0f} | {per:.0f} "
              f"| {ours['tensor_mb']:.0f} | {ours['frame_mb']:.0f} | {extra} |")  # fmt: skip
    print(f"\nTable 2: time per training batch fetched, {min(sizes):,} rows, window {args.window}, {f} features, "
          f"median of {args.batches} x {args.repeats} alternating; one training step for scale\n")  # fmt: skip
    print("| batch | template loader ms | per-window Dataset + default collate ms | ratio common / template "
          "| one training step (2 x 64 LSTM) ms | fetch / step |")  # fmt: skip
    print("|--:|--:|--:|--:|--:|--:|")
    for batch, ours, common, step in fetch:
        print(f"| {batch} | {1e3 * ours:.2f} | {1e3 * common:.2f} | {common / ours:.1f} | {1e3 * step:.0f} "
              f"| {ours / step:.4f} |")  # fmt: skip
    print(f"\n# load average at the end {os.getloadavg()[0]:.1f}")
