"""Whole runs as a user times them: `python -m forecasting fit` against `benchmarks/plain_fit.py`.

GNU time-style: each run is a fresh process, timed from start to exit (wall time; CPU time and
peak memory from wait4). The template and the plain script alternate (which goes first flips each
repeat), and each repeat gives a paired ratio plain / template: 1.0 means the template costs
nothing extra, 0.85 that a template run takes 1 / 0.85 = 1.18x the plain script's time.

    python benchmarks/whole_run.py                          # everything, ~25 min on 2 loaded cores
    python benchmarks/whole_run.py --sections runs --epochs 1 3 15 --repeats 3
    python benchmarks/whole_run.py --sections startup breakdown
    python benchmarks/whole_run.py --sections runs --epochs 3 --plain-freeze-gc   # the plain script with gc.freeze()

Sections:
  runs       fit at each --epochs (1, 3, 15: fixed and per-epoch costs separate) against the plain script
  startup    `import torch`, `import lightning`, what the plain script imports, `python -m forecasting --help`,
             and the largest imports of `--help` (python -X importtime)
  data       building the data (read, features, scaling, splits, windows): data module vs plain_fit.load
  breakdown  the template at --breakdown-epochs with one cost removed at a time, rotated order per repeat:
             what each part of a run costs (median of the paired differences with the full run)

Early stopping is disabled for the timings (`--early_stopping.patience 1000`) so both sides run
every epoch; the progress bar is off (`--trainer.enable_progress_bar false`), as in a batch job.
Threads: both sides get OMP_NUM_THREADS=--threads (default 1): on 2 cores shared with other
processes, 2 OpenMP threads stall each other at every LSTM time step (BENCHMARKS.md, "Noise").
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/volatility.yaml"

# One cost removed at a time (extra template arguments). Every variant keeps the same data, model and epochs.
BREAKDOWN = {
    "as shipped (every diagnostic on)": [],
    "per-step diagnostics off (configs/fast.yaml)": ["--config", "configs/fast.yaml"],
    "every diagnostic off (trainer.callbacks=[])": ["--trainer.callbacks=[]"],
    "figures off (ForecastPlot, GradientFlow figure; scalars kept)": "figures",  # built in figure_args()
    "deterministic: false": ["--trainer.deterministic", "false"],
    "no last.ckpt (checkpoint.save_last false)": ["--checkpoint.save_last", "false"],
    "no checkpoints (save_top_k 0, save_last false)": ["--checkpoint.save_top_k=0", "--checkpoint.save_last=false"],
    "no sanity check (num_sanity_val_steps 0)": ["--trainer.num_sanity_val_steps", "0"],
}


SCALAR_CALLBACKS = ("nonfinite_guard.NonFiniteGuard", "grad_norms.GradientNorms", "grad_histograms.GradientHistograms",
                    "gate_saturation.GateSaturation", "hparams.HParamsMetric")  # fmt: skip


def figure_args(repo: Path) -> list[str]:
    """Every diagnostic except the figures: the figure callbacks with their figure interval set beyond
    the run (a checkout without that argument, from before this script, drops GradientFlow too)."""
    args = ["--trainer.callbacks=[]", *(f"--trainer.callbacks+=forecasting.callbacks.{c}" for c in SCALAR_CALLBACKS)]
    if "figure_every_n" in (repo / "forecasting/callbacks/grad_flow.py").read_text():
        args += ["--trainer.callbacks+=forecasting.callbacks.grad_flow.GradientFlow",
                 "--trainer.callbacks.figure_every_n=1000000"]  # fmt: skip
    return args


def run(cmd: list[str], cwd: Path, env: dict) -> dict:
    """Wall seconds, CPU seconds (user + sys) and peak MB of one process, GNU time-style."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{stderr.decode()[-3000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "mb": usage.ru_maxrss / 1024, "stderr": stderr}


def template_cmd(epochs: int, out: str, extra=()) -> list[str]:
    return [
        sys.executable, "-m", "forecasting", "fit", "--config", CONFIG, "--trainer.max_epochs", str(epochs),
        "--trainer.enable_progress_bar", "false", "--early_stopping.patience", "1000",
        "--trainer.logger.init_args.save_dir", out, *extra,
    ]  # fmt: skip


def plain_cmd(epochs: int, out: str) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks/plain_fit.py"), "--epochs", str(epochs), "--out", f"{out}/plain.pt"]


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """median (min-max)"""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def section_runs(args, env, tmp) -> None:
    plain = "plain script with the template's gc.freeze() start-up" if args.plain_freeze_gc else "plain script"
    print(f"\n### Whole fit, template vs {plain} ({args.repeats} alternating repeats, wall seconds)\n")
    if args.plain_freeze_gc:
        env = {**env, "PLAIN_FIT_FREEZE_GC": "1"}
    print("| epochs | template s | plain s | ratio of medians | paired ratio plain / template | template CPU s | plain CPU s | paired CPU ratio | template / plain peak MB |")  # noqa: E501
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    medians = {}
    for epochs in args.epochs:
        t, p = [], []
        for r in range(args.repeats):
            pair = [("t", template_cmd(epochs, tmp)), ("p", plain_cmd(epochs, tmp))]
            for side, cmd in pair if r % 2 == 0 else pair[::-1]:
                (t if side == "t" else p).append(run(cmd, args.repo, env))
            print(f"#   {epochs} epochs, repeat {r}: template {t[-1]['wall']:.1f} s, plain {p[-1]['wall']:.1f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
        tw, pw = [x["wall"] for x in t], [x["wall"] for x in p]
        medians[epochs] = (statistics.median(tw), statistics.median(pw))
        ratios = [b / a for a, b in zip(tw, pw, strict=True)]
        # CPU seconds barely move with other processes' load; wall seconds do (see "Noise" in BENCHMARKS.md).
        cpu_ratios = [b["cpu"] / a["cpu"] for a, b in zip(t, p, strict=True)]
        print(f"| {epochs} | {spread(tw)} | {spread(pw)} | {medians[epochs][1] / medians[epochs][0]:.2f} | "
              f"{spread(ratios, '{:.2f}')} | {spread([x['cpu'] for x in t])} | {spread([x['cpu'] for x in p])} | "
              f"{spread(cpu_ratios, '{:.2f}')} | {statistics.median(x['mb'] for x in t):.0f} / "
              f"{statistics.median(x['mb'] for x in p):.0f} |", flush=True)  # fmt: skip
    if len(medians) >= 2:
        lo, hi = min(medians), max(medians)
        print("\nFixed and per-epoch cost from the medians (a straight line through the fewest and most epochs):\n")
        print("| | fixed s (start-up, data, set-up) | s per epoch |\n|:--|--:|--:|")
        for i, name in enumerate(("template", "plain script")):
            per_epoch = (medians[hi][i] - medians[lo][i]) / (hi - lo)
            print(f"| {name} | {medians[lo][i] - lo * per_epoch:.1f} | {per_epoch:.2f} |")


def section_startup(args, env, tmp) -> None:
    cmds = {
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "python -c 'import lightning'": [sys.executable, "-c", "import lightning"],
        "plain script's imports (torch, forecasting.data.io)": [
            sys.executable, "-c", "import torch, forecasting.data.io, forecasting.data.features"],
        "python -m forecasting --help": [sys.executable, "-m", "forecasting", "--help"],
        "python -m forecasting fit --help": [sys.executable, "-m", "forecasting", "fit", "--help"],
    }  # fmt: skip
    print(f"\n### Start-up ({args.repeats} rotated repeats, wall seconds)\n")
    print("| command | wall s | CPU s |\n|:--|--:|--:|")
    times: dict[str, list[dict]] = {name: [] for name in cmds}
    names = list(cmds)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(run(cmds[name], args.repo, env))
    for name, runs in times.items():
        wall, cpu = spread([x["wall"] for x in runs], "{:.2f}"), spread([x["cpu"] for x in runs], "{:.2f}")
        print(f"| `{name}` | {wall} | {cpu} |")
    out = run([sys.executable, "-X", "importtime", "-m", "forecasting", "--help"], args.repo, env)["stderr"].decode()
    # Cumulative time of each top-level package the first time it is imported (CPU-bound, one run).
    totals: dict[str, float] = {}
    for line in out.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m[2]) == 1:  # imported directly by the program, not by another package
            root = m[3].split(".")[0]
            totals[root] = totals.get(root, 0.0) + int(m[1]) / 1e6
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:10]
    print("\n`python -X importtime -m forecasting --help`: largest top-level imports (cumulative s, one run)\n")
    print("| package | s |\n|:--|--:|")
    for name, seconds in top:
        print(f"| {name} | {seconds:.2f} |")
    print(f"| (all) | {sum(totals.values()):.2f} |")


DATA_TEMPLATE = """
import time, yaml
from forecasting.data.datamodule import PriceDataModule
args = yaml.safe_load(open('configs/volatility.yaml'))['data']['init_args']
t = time.perf_counter()
dm = PriceDataModule(**args)
dm.setup('fit'); dm.dataset('train'); dm.dataset('val')
print(time.perf_counter() - t)
"""
DATA_PLAIN = """
import sys, time
sys.path.insert(0, 'benchmarks')
import plain_fit
t = time.perf_counter()
plain_fit.load('data/stocks.csv')
print(time.perf_counter() - t)
"""


def section_data(args, env, tmp) -> None:
    print(f"\n### Data set-up, after the imports ({args.repeats} alternating repeats, seconds)\n")
    t, p = [], []
    for r in range(args.repeats):
        pair = [(t, DATA_TEMPLATE), (p, DATA_PLAIN)]
        for out, code in pair if r % 2 == 0 else pair[::-1]:
            proc = subprocess.run([sys.executable, "-c", code], cwd=args.repo, env=env, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(proc.stderr[-2000:])
            out.append(float(proc.stdout.split()[-1]))
    print("| | s |\n|:--|--:|")
    print(f"| data module: setup('fit') + train and val datasets (with baselines fitted) | {spread(t, '{:.2f}')} |")
    print(f"| plain_fit.load | {spread(p, '{:.2f}')} |")


def section_breakdown(args, env, tmp) -> None:
    variants = {name: figure_args(args.repo) if extra == "figures" else extra for name, extra in BREAKDOWN.items()}
    names = list(variants)
    print(f"\n### Where a template run's time goes ({args.breakdown_epochs} epochs, {args.repeats} rotated repeats)\n")
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(run(template_cmd(args.breakdown_epochs, tmp, variants[name]), args.repo, env)["wall"])
        print(f"#   breakdown repeat {r} done", file=sys.stderr, flush=True)
    full = times[names[0]]
    print("| variant | wall s | saves vs as shipped: paired median (min-max) s | share of the run |")
    print("|:--|--:|--:|--:|")
    for name in names:
        saved = [a - b for a, b in zip(full, times[name], strict=True)]
        share = statistics.median(saved) / statistics.median(full)
        cell = "" if name == names[0] else f"{spread(saved, '{:.1f}')} | {share:.0%}"
        print(f"| {name} | {spread(times[name])} | {cell or ' | '} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", default=["startup", "data", "runs", "breakdown"],
                        choices=["startup", "data", "runs", "breakdown"])  # fmt: skip
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3, 15])
    parser.add_argument("--breakdown-epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run (0: torch's choice)")
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout whose template runs (default: this one)")
    parser.add_argument("--plain-freeze-gc", action="store_true",
                        help="runs: give the plain script the template's start-up trick too (gc off while importing, "
                             "then gc.freeze(): PLAIN_FIT_FREEZE_GC=1)")  # fmt: skip
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.repo), "PYTHONWARNINGS": "ignore"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    import torch  # versions for the header only; the timed runs are separate processes

    print(f"# python {' '.join(sys.argv)}\n# {os.cpu_count()} CPUs, OMP_NUM_THREADS={args.threads or 'unset'}, "
          f"python {sys.version.split()[0]}, torch {torch.__version__}, template at {args.repo}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for section in args.sections:
            globals()[f"section_{section}"](args, env, tmp)
    print(f"\n# load average at the end {os.getloadavg()[0]:.1f}")
