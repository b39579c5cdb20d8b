"""Walk-forward backtest: refit from fresh weights at every cutoff, test on the next period, pool.

    python -m forecasting backtest --config configs/volatility.yaml [--folds 4] [--test_period 1y]
        [--scheme expanding|sliding] [--train_period 5y] [--val_period 1y] [--start 2009-01-01]
        [--fold i] [--merge] [--out DIR] [any fit argument: --trainer.max_epochs 10 ...]

Fold i tests on [cutoff_i, cutoff_i + test_period); the test periods tile the evaluated span,
which ends with the data (or starts at --start). It validates (early stopping, checkpoint
choice) on the val_period before its cutoff and trains on everything before that (expanding)
or on the train_period before that (sliding). Each fold is a fresh `fit` of the config, with
the config's seed: every fold starts from the same initial weights, never the previous
fold's trained ones, and its data module refits the scaler and the baselines on that fold's
training rows. The backtest refuses to report if a fold's scaler or baselines saw a day of
its own test period.

Outputs, in <save_dir>/<name>/backtest/ (or --out): fold_i/ (one TensorBoard run and its
checkpoints per fold), fold_i.csv + fold_i.json (a fold's forecasts and record: finished folds
are skipped, so a killed backtest resumes at the first unfinished fold), and after the last
fold: forecasts.csv, folds.csv, pooled.csv, dm.csv (Diebold-Mariano, stats.py),
cumulative_loss.png, summary.txt (also in TensorBoard under summary/).
`--fold i` runs one fold alone and `--merge` only pools finished folds (docs/backtest.md:
a SLURM job array).
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from forecasting import stats
from forecasting.baselines import scores
from forecasting.errors import ForecastingError, OneLineParser

UNITS = {"d": "days", "w": "weeks", "m": "months", "y": "years"}


def period(text: str, key: str) -> pd.DateOffset:
    """'1y', '6m', '13w', '90d' as a calendar offset."""
    match = re.fullmatch(r"(\d+)\s*([dwmy])", str(text).strip().lower())
    if not match or int(match[1]) == 0:
        raise ForecastingError(f"--{key}: cannot read period {text!r}; use a number and d/w/m/y, e.g. 1y, 6m, 90d")
    return pd.DateOffset(**{UNITS[match[2]]: int(match[1])})


@dataclass
class Fold:
    index: int
    train_start: str | None  # None: from the data's start (expanding)
    val_start: str
    test_start: str  # the cutoff
    test_end: str  # exclusive


def plan(dates, folds: int | None, test_period: str, val_period: str | None = None, scheme: str = "expanding",
         train_period: str | None = None, start: str | None = None) -> list[Fold]:  # fmt: skip
    """Cutoffs from the data's days: test periods of `test_period` tile the span up to the last day."""
    dates = pd.DatetimeIndex(pd.to_datetime(pd.Series(dates)).unique()).sort_values()
    step = period(test_period, "test_period")
    val = period(val_period or test_period, "val_period")
    if scheme not in ("expanding", "sliding"):
        raise ForecastingError(f"--scheme: unknown scheme {scheme!r}; use expanding or sliding")
    if scheme == "sliding" and train_period is None:
        raise ForecastingError("--scheme sliding needs --train_period (e.g. 5y): every fold's training span")
    train = period(train_period, "train_period") if scheme == "sliding" else None
    end = dates[-1] + pd.Timedelta(days=1)  # exclusive
    if start is None:
        folds = 4 if folds is None else folds
        first = end - step * folds if folds else end
    else:
        try:
            first = pd.Timestamp(start)
        except (ValueError, TypeError):
            raise ForecastingError(f"--start: cannot read the date {start!r}; use YYYY-MM-DD") from None
        if first >= end:
            raise ForecastingError(
                f"--start {first.date()}: no day of the data is on or after it (the last is {dates[-1].date()})"
            )
        if folds is None:  # as many periods as reach the data's end (the last one may be shorter)
            folds = 0
            while first + step * folds < end:
                folds += 1
    if folds < 1:
        raise ForecastingError(f"--folds: need at least 1 fold, got {folds}")
    out = []
    for i in range(folds):
        cut, stop = first + step * i, min(first + step * (i + 1), end)
        if not ((dates >= cut) & (dates < stop)).any():
            raise ForecastingError(
                f"fold {i}: no day of the data in its test period {cut.date()} to {stop.date()}; "
                "use fewer --folds, a shorter --test_period or a later --start"
            )
        val_start = cut - val
        if (dates < val_start).sum() == 0:
            raise ForecastingError(
                f"fold {i}: no training days before {val_start.date()} (cutoff {cut.date()} minus --val_period); "
                "use fewer --folds or a shorter --test_period/--val_period"
            )
        train_start = None if train is None else str((val_start - train).date())
        out.append(Fold(i, train_start, str(val_start.date()), str(cut.date()), str(stop.date())))
    return out


def fingerprint(model: torch.nn.Module) -> str:
    """Short hash of every weight: equal fingerprints, equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def forecast_frame(model, dm, fold: int) -> pd.DataFrame:
    """One row per (test window, h): origin day, target day, ticker, model and baseline forecasts, actual."""
    ds = dm.dataset("test")
    batch = ds.__getitems__(list(range(len(ds))))
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        pred = model(batch["x"].to(device)).cpu() * batch["y_scale"] + batch["y_loc"]
    y = batch["y"][:, -1] if batch["y"].dim() == 3 else batch["y"]
    actual = y * batch["y_scale"] + batch["y_loc"]
    rows = batch["row"].numpy()
    times = dm.frames["fit"]["time"].to_numpy()
    where = dm.describe_rows(batch["row"], "test")
    parts = []
    for h in range(pred.shape[1]):
        part = {"date": pd.to_datetime(times[rows + h + 1]).date, "origin": where["date"].to_numpy(),
                "ticker": where["ticker"].to_numpy(), "h": h + 1, "fold": fold,
                "model": pred[:, h].numpy().astype(float)}  # fmt: skip
        for name, values in batch.get("baselines", {}).items():
            part[name] = values[:, h].numpy().astype(float)
        part["actual"] = actual[:, h].numpy().astype(float)
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True)


def leaks(record: dict) -> list[str]:
    """What of a fold's fitted state saw a day on or after its test start (or validation start)."""
    problems = []
    for part in ("scaler", "baselines"):
        span = record["ranges"].get(part)
        if span is None:
            problems.append(f"fold {record['fold']}: no record of the days its {part} was fitted on")
        elif span[1] >= record["val_start"]:
            problems.append(
                f"fold {record['fold']}: its {part} saw days up to {span[1]}, but its validation starts "
                f"{record['val_start']} and its test period {record['test_start']}"
            )
    return problems


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a kill never leaves a half-written result that would count as finished


class Backtest:
    def __init__(self, build, args: list[str], out: Path, folds: list[Fold], dm_lags: int | None = None):
        self.build, self.args, self.out, self.folds, self.dm_lags = build, args, out, folds, dm_lags
        self.key = {"args": args, "folds": [asdict(f) for f in folds]}

    def done(self, i: int) -> dict | None:
        path = self.out / f"fold_{i}.json"
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record.get("key") != self.key:
            raise ForecastingError(
                f"{path}: made by a backtest with other arguments or folds; use another --out "
                f"or delete {self.out} to start over"
            )
        return record

    def run_fold(self, fold: Fold) -> dict:
        """Train fold `fold` from fresh weights, test its best checkpoint, write fold_i.csv + .json."""
        i, n = fold.index, len(self.folds)
        record = self.done(i)
        if record is not None:
            print(f"fold {i}/{n}: finished earlier ({self.out / f'fold_{i}.json'}), skipped", flush=True)
            return record
        shutil.rmtree(self.out / f"fold_{i}", ignore_errors=True)  # an interrupted attempt's partial run
        t0 = time.perf_counter()
        split = ["--data.init_args.val_start", fold.val_start, "--data.init_args.test_start", fold.test_start,
                 "--data.init_args.test_end", fold.test_end, "--trainer.logger.init_args.save_dir", str(self.out),
                 "--trainer.logger.init_args.name", "", "--trainer.logger.init_args.version", f"fold_{i}"]  # fmt: skip
        if fold.train_start is not None:
            split += ["--data.init_args.train_start", fold.train_start]
        cli = self.build([*self.args, *split])
        model, dm, trainer = cli.model, cli.datamodule, cli.trainer
        initial = fingerprint(model)  # fresh: the config's seed, nothing carried over from fold i-1
        before_fit = getattr(cli, "before_fit", None)  # the CLI's checks on one batch, as `fit` runs them
        if before_fit is not None:
            before_fit()
        t1 = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        t2 = time.perf_counter()
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if not best:
            raise ForecastingError(f"fold {i}: no checkpoint was saved; keep `checkpoint.monitor: val/loss`")
        trainer.test(model, datamodule=dm, ckpt_path=best, verbose=False)  # best weights; test/* in TensorBoard
        t3 = time.perf_counter()
        frame = forecast_frame(model, dm, i)
        record = {**asdict(fold), "fold": i, "key": self.key, "ranges": dict(dm.stats["ranges"]),
                  "initial_weights": initial, "trained_weights": fingerprint(model), "checkpoint": best,
                  "epochs": trainer.current_epoch, "target_kind": dm.target_kind,
                  "windows": int(len(frame))}  # fmt: skip
        problems = leaks(record)
        if problems:
            raise ForecastingError("leakage: " + "; ".join(problems))
        self.out.mkdir(parents=True, exist_ok=True)
        frame.to_csv(self.out / f"fold_{i}.csv", index=False)
        t4 = time.perf_counter()
        record["seconds"] = {"setup": t1 - t0, "fit": t2 - t1, "test": t3 - t2, "forecasts": t4 - t3, "total": t4 - t0}
        write_atomic(self.out / f"fold_{i}.json", json.dumps(record, indent=1))

        def mse(part, name):
            return np.mean((part[name] - part["actual"]) ** 2)

        base = next(b for b in ("har", "naive", "mean") if b in frame)
        label = base.upper() if base == "har" else base
        line = f"fold {i}/{n} cutoff {fold.test_start} (test to {fold.test_end}, {record['epochs']} epochs): "
        line += f"test MSE {mse(frame, 'model'):.4g} vs {label} {mse(frame, base):.4g}"
        earlier = [self.out / f"fold_{f.index}.csv" for f in self.folds if f.index != i]
        earlier = [pd.read_csv(path) for path in earlier if path.with_suffix(".json").is_file()]
        if earlier:
            pooled = pd.concat([frame, *earlier])
            line += f"; pooled over {len(earlier) + 1} folds {mse(pooled, 'model'):.4g} vs {mse(pooled, base):.4g}"
        print(line, flush=True)
        return record

    def merge(self) -> str:
        """Pool every fold's forecasts: tables, DM tests, figure, summary. Returns the summary text."""
        records = [self.done(f.index) for f in self.folds]
        missing = [f.index for f, r in zip(self.folds, records, strict=True) if r is None]
        if missing:
            raise ForecastingError(f"{self.out}: folds {missing} are not finished; run them (--fold i) before --merge")
        problems = [p for r in records for p in leaks(r)]
        if problems:
            raise ForecastingError("leakage, refusing to report: " + "; ".join(problems))
        frame = pd.concat([pd.read_csv(self.out / f"fold_{r['fold']}.csv") for r in records], ignore_index=True)
        frame.to_csv(self.out / "forecasts.csv", index=False)
        kind = records[0]["target_kind"]
        names = [c for c in ("model", "naive", "mean", "har") if c in frame]
        by_fold = {r["fold"]: table(frame[frame["fold"] == r["fold"]], names, kind) for r in records}
        per_fold = pd.concat(by_fold, names=["fold", "forecast"])
        pooled = table(frame, names, kind)
        dm = dm_table(frame, names, kind, self.dm_lags)
        per_fold.to_csv(self.out / "folds.csv")
        pooled.to_csv(self.out / "pooled.csv")
        dm.to_csv(self.out / "dm.csv", index=False)
        figure = cumulative_figure(frame, [f.test_start for f in self.folds], kind)
        figure.savefig(self.out / "cumulative_loss.png", dpi=100)
        text = summary(self.folds, records, per_fold, pooled, dm, kind)
        (self.out / "summary.txt").write_text(text)
        to_tensorboard(self.out / "summary", text, figure)
        return text


def table(frame: pd.DataFrame, names: list[str], kind: str) -> pd.DataFrame:
    """MSE, MAE, skill vs each baseline (+ QLIKE for log variance, hit rate for returns) over all rows."""
    actual = frame["actual"].to_numpy()
    out = scores({n: frame[n].to_numpy() for n in names}, actual, direction=kind == "return")
    if kind == "log_variance":
        out.insert(2, "qlike", [float(np.mean(stats.qlike(frame[n].to_numpy(), actual))) for n in names])
    out.insert(0, "windows", len(frame))
    return out


def differentials(frame: pd.DataFrame, base: str, loss: str, h: int) -> pd.Series:
    """Loss of the model minus loss of `base` per target day, averaged over tickers (one series in time)."""
    part = frame[frame["h"] == h]
    fn = stats.LOSSES[loss]
    d = fn(part["model"].to_numpy(), part["actual"].to_numpy()) - fn(part[base].to_numpy(), part["actual"].to_numpy())
    return pd.Series(d, index=part.index).groupby(part["date"].to_numpy()).mean().sort_index()


def dm_table(frame: pd.DataFrame, names: list[str], kind: str, lags: int | None) -> pd.DataFrame:
    """DM test of the model against each baseline, pooled over tickers, then per ticker."""
    losses = ["mse", "qlike"] if kind == "log_variance" else ["mse"]
    rows = []
    groups = [("all", frame)] + ([(t, g) for t, g in frame.groupby("ticker")] if frame["ticker"].nunique() > 1 else [])
    for base in names[1:]:
        for loss in losses:
            for h in sorted(frame["h"].unique()):
                for ticker, group in groups:
                    result = stats.diebold_mariano(differentials(group, base, loss, h).to_numpy(), horizon=h, lags=lags)
                    rows.append({"baseline": base, "loss": loss, "h": h, "ticker": ticker, **result})
    return pd.DataFrame(rows)


def cumulative_figure(frame: pd.DataFrame, cutoffs: list[str], kind: str):
    """Cumulative loss differential (model minus HAR, else naive) over time: falling = the model wins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = "har" if "har" in frame else "naive"
    losses = ["mse", "qlike"] if kind == "log_variance" else ["mse"]
    figure, ax = plt.subplots(figsize=(9, 4))
    for loss in losses:
        d = differentials(frame, base, loss, 1)
        ax.plot(pd.to_datetime(d.index), d.cumsum().to_numpy(), label=f"{loss}: model minus {base}")
    for cut in cutoffs:
        ax.axvline(pd.Timestamp(cut), color="grey", linestyle=":", linewidth=1)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel("cumulative loss differential (h=1)")
    ax.set_title(f"Below 0 and falling: the model beats {base} (dotted: fold cutoffs)")
    ax.legend()
    figure.tight_layout()
    return figure


def summary(folds, records, per_fold, pooled, dm, kind) -> str:
    lines = [f"walk-forward backtest: {len(folds)} folds, test periods {folds[0].test_start} to {folds[-1].test_end}"]
    for f, r in zip(folds, records, strict=True):
        lines.append(
            f"  fold {f.index}: train {r['ranges'].get('train_targets', ['?'])[0]} to {f.val_start}, val to "
            f"{f.test_start}, test to {f.test_end}; {r['epochs']} epochs; scaler fitted on "
            f"{r['ranges']['scaler'][0]}..{r['ranges']['scaler'][1]}, baselines on "
            f"{r['ranges']['baselines'][0]}..{r['ranges']['baselines'][1]}"
        )
    lines += ["", "pooled over all folds (original units):", pooled.to_string(float_format="{:.4g}".format)]
    lines += ["", "per fold:", per_fold.to_string(float_format="{:.4g}".format)]
    shown = dm[dm["ticker"] == "all"][["baseline", "loss", "h", "n", "mean_d", "hln", "lags", "p_less", "p_two_sided"]]
    lines += ["", "Diebold-Mariano (HLN-corrected, Newey-West), model vs baseline, all tickers:",
              "  mean_d < 0: the model's loss is lower; p_less: one-sided p for 'the model is better'",
              shown.to_string(index=False, float_format="{:.4g}".format)]  # fmt: skip
    return "\n".join(lines)


def to_tensorboard(path: Path, text: str, figure) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(path))
    writer.add_text("backtest/summary", "    " + text.replace("\n", "\n    "))  # indented: monospace in TensorBoard
    writer.add_figure("backtest/cumulative_loss_differential", figure)
    writer.close()


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = OneLineParser(
        prog="python -m forecasting backtest",
        description="Walk-forward backtest: a fresh fit per fold, pooled tables and Diebold-Mariano tests.",
        epilog="Every other argument (--config, --trainer.max_epochs 10, ...) is passed to each fold's fit.",
    )
    parser.add_argument("--folds", type=int, help="test periods (default 4; with --start: up to the data's end)")
    parser.add_argument("--test_period", default="1y", help="length of each fold's test period: 1y, 6m, 13w, 90d")
    parser.add_argument("--val_period", help="validation span before each cutoff (default: --test_period)")
    parser.add_argument("--scheme", default="expanding", choices=["expanding", "sliding"])
    parser.add_argument("--train_period", help="sliding: the training span of every fold (e.g. 5y)")
    parser.add_argument("--start", help="first test day (default: the test periods end with the data)")
    parser.add_argument("--fold", type=int, help="run this fold only (0-based; e.g. a SLURM array task)")
    parser.add_argument("--merge", action="store_true", help="only pool the finished folds' results")
    parser.add_argument("--out", help="output folder (default: <save_dir>/<name>/backtest)")
    parser.add_argument("--dm_lags", type=int, help="Newey-West lags (default: max(h-1, floor(4 (n/100)^(2/9))))")
    return parser.parse_known_args(argv)


def main(argv: list[str], build) -> Backtest:
    """`build(args)` makes a CLI with run=False (cli.py): model, data module and trainer of one fit."""
    options, args = parse(argv)
    cli = build(args)  # the config as given: its data module's days and its log folder
    dm = cli.datamodule
    if not all(hasattr(dm, k) for k in ("val_start", "test_start", "frames", "load")):
        raise ForecastingError(
            f"data: backtest needs a data module split by dates (data.init_args.val_start/test_start, like "
            f"PriceDataModule); {type(dm).__name__} has none"
        )
    folds = plan(dm.load(dm.path)["time"], options.folds, options.test_period, options.val_period,
                 options.scheme, options.train_period, options.start)  # fmt: skip
    logger = cli.trainer.logger
    if options.out is None and (logger is None or not getattr(logger, "save_dir", None)):
        raise ForecastingError(
            "backtest: no logger folder in the config (trainer.logger.init_args.save_dir); pass --out"
        )
    out = Path(options.out) if options.out else Path(logger.save_dir) / (logger.name or "") / "backtest"
    if options.fold is not None and not 0 <= options.fold < len(folds):
        raise ForecastingError(f"--fold {options.fold}: the plan has folds 0 to {len(folds) - 1}")
    backtest = Backtest(build, args, out, folds, options.dm_lags)
    print(f"backtest: {len(folds)} folds ({options.scheme}), test periods of {options.test_period} "
          f"from {folds[0].test_start} to {folds[-1].test_end}; results in {out}", flush=True)  # fmt: skip
    if options.fold is not None:
        backtest.run_fold(folds[options.fold])
        return backtest
    if not options.merge:
        for fold in folds:
            backtest.run_fold(fold)
    print(backtest.merge(), flush=True)
    print(f"\nwritten: {out}/forecasts.csv, pooled.csv, folds.csv, dm.csv, cumulative_loss.png, summary.txt")
    return backtest


def run(argv: list[str], build) -> Backtest | None:
    """The CLI's entry (cli.main): a user error is one line on stderr and exit status 2."""
    sys.argv = sys.argv[:1]  # LightningCLI warns when it gets both args and a command line
    try:
        return main(argv, build)
    except ForecastingError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
