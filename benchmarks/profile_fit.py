"""Where a training step's time goes: cProfile of the template's `fit`, the steps only.

    python benchmarks/profile_fit.py                       # default model, batch 64, CPU
    python benchmarks/profile_fit.py --diagnostics off --progress-bar off
    python benchmarks/profile_fit.py --accelerator cuda --precision bf16-mixed

Builds the template exactly as benchmarks/throughput.py does (configs/volatility.yaml), runs
one epoch of at most --steps training steps with one validation batch, and prints the functions
with the most time of their own and the most cumulative time inside the training loop. Use it
to find overhead; use throughput.py to measure it (cProfile slows small Python calls down). The
epoch includes its one validation batch and that validation's figures: one-off costs, shared out
per step (the first figure of a process also loads fonts).
"""

import argparse
import cProfile
import pstats
import tempfile

import torch
from common import begin, quiet
from throughput import SIZES, build, fit_quietly

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="default", choices=list(SIZES))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--diagnostics", default="on", choices=["on", "off"])
    parser.add_argument("--progress-bar", default="on", choices=["on", "off"])
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    begin(f"precision {args.precision}", accelerator=args.accelerator)
    quiet()
    extra = [] if args.progress_bar == "on" else ["--trainer.enable_progress_bar=false"]
    with tempfile.TemporaryDirectory() as log_dir:
        cli = build(args, args.size, args.batch_size, log_dir, extra, diagnostics=args.diagnostics == "on")
        trainer = cli.trainer
        trainer.limit_train_batches, trainer.limit_val_batches, trainer.num_sanity_val_steps = args.steps, 1, 0
        trainer.fit_loop.epoch_loop.max_steps = -1
        profiler = cProfile.Profile()
        loop = trainer.fit_loop.epoch_loop
        run = loop.run

        def profiled_run(*a, **k):  # profile the training epoch, not startup
            profiler.enable()
            try:
                return run(*a, **k)
            finally:
                profiler.disable()

        loop.run = profiled_run
        fit_quietly(trainer, cli.model, cli.datamodule)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    stats = pstats.Stats(profiler)
    print(f"\n{trainer.global_step} steps; functions by own time (tottime) and cumulative time, per step in ms\n")
    entries = stats.stats.items()  # (file, line, name) -> (calls, primitive calls, tottime, cumtime, callers)
    for title, key in (("own time", 2), ("cumulative", 3)):
        print(f"| {title}: function | calls / step | ms / step |\n|:--|--:|--:|")
        for (file, line, name), row in sorted(entries, key=lambda kv: -kv[1][key])[: args.top]:
            where = file.split("site-packages/")[-1].split("/work/main/")[-1]
            print(f"| `{where}:{line}({name})` | {row[0] / trainer.global_step:.1f} | "
                  f"{1e3 * row[key] / trainer.global_step:.3f} |")  # fmt: skip
        print()
