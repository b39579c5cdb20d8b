"""Training throughput: the template's fit loop versus a minimal hand-written PyTorch loop.

    python benchmarks/throughput.py                                  # CPU, about 4 minutes on 2 cores
    python benchmarks/throughput.py --sizes default --batch-sizes 64 128 256 512 --steps 60
    python benchmarks/throughput.py --sizes xlarge --batch-sizes 64   # window 256, 3 x 256: slow on CPU
    python benchmarks/throughput.py --accelerator cuda --precision bf16-mixed   # on a GPU

(a) The template: built exactly as `python -m forecasting fit --config configs/volatility.yaml`
    builds it (`forecasting.cli.main(run=False)`: the config's diagnostics callbacks, checkpointing,
    early stopping, LR monitor, TensorBoard logger, progress bar, clipping, `deterministic: true`,
    log_every_n_steps), with the model and window sizes overridden, then `trainer.fit`.
(b) The reference: a copy of the same `StackedRNN` with the same initial weights, trained by the
    ten-line loop in `ReferenceStep.step` on the same tensors (the data module's rows, viewed as
    windows, moved to the device once), with the same optimiser (AdamW), loss (MSE on the last
    step) and clipping (total norm 1.0).

The two run ALTERNATELY, step by step, in one process: a callback runs one reference step after
each template step, so a noisy neighbour slows both alike. A template step is the time between
two consecutive `on_train_batch_end` calls minus the reference step run between them: it holds
everything the template does per batch (fetching it, hooks, diagnostics, logging, progress bar,
clipping). The first `--warmup` steps are dropped. Reported: windows/s of each over the same
steps, their ratio (a)/(b) (goal: 0.9 or better at batch 64 and above), the median of the
per-step paired ratios (robust to a neighbour's burst, but blind to costs that recur every N
steps, such as logging), and the template's extra milliseconds per step.

Validation is cut to one batch and the sanity check is off in Table 1: they run outside the
timed steps. Table 2 times whole epochs (startup, sanity check, training, full validation,
diagnostics, checkpoints) against a reference epoch plus a validation pass, and Table 3 splits
the template's callbacks' cost per training step and per validation epoch.
Truncated versus full BPTT: benchmarks/tbptt.py; diagnostics on/off over whole epochs in both
BPTT modes: benchmarks/diagnostics_overhead.py.
"""

import argparse
import contextlib
import copy
import os
import statistics
import tempfile
import time

import lightning as L
import torch
from common import begin, quiet
from torch import nn

from forecasting.cli import main
from forecasting.data.windows import window_view

SIZES = {  # name: (hidden_size, num_layers, window)
    "default": (64, 2, 64),  # configs/volatility.yaml
    "medium": (128, 2, 128),
    "large": (256, 3, 128),
    "xlarge": (256, 3, 256),  # slow on CPU (about 60 windows/s on 2 cores): opt in with --sizes
}
STEPS = {"default": 60, "medium": 16, "large": 6, "xlarge": 4}  # steps per run unless --steps
DIAGNOSTICS = tuple(f"forecasting.callbacks.{m}" for m in ("nonfinite_guard", "grad", "gate", "forecast", "hparams"))
TRAIN_HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_zero_grad",
               "on_before_optimizer_step", "on_train_batch_end")  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class ReferenceStep(L.Callback):
    """The hand-written loop, one step per call, interleaved with the template's steps."""

    def __init__(self, net: nn.Module, dataset, batch_size: int, device, precision: str, seed: int = 0):
        self.device, self.batch_size = device, batch_size
        self.net = net.to(device).train()
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-3, weight_decay=1e-4)
        # The same tensors as the template's data set, moved to the device once: the (rows, F) features
        # (recovered from the window view) viewed as windows again there, and the (rows, H) targets.
        features = torch.cat([dataset.x[0], dataset.x[1:, -1]])
        self.x, self.y = window_view(features.to(device), dataset.window), dataset.y.to(device)
        self.ends, self.window = dataset.ends.to(device), dataset.window
        self.order = torch.randperm(len(self.ends), generator=torch.Generator().manual_seed(seed)).to(device)
        self.dtype = torch.bfloat16 if precision.startswith("bf16") else None
        self.i, self.t_template, self.t_reference, self.last = 0, [], [], None

    def step(self) -> None:
        start = self.i * self.batch_size % (len(self.order) - self.batch_size)
        end = self.ends[self.order[start : start + self.batch_size]]
        x, y = self.x[end - (self.window - 1)], self.y[end]
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out, _ = self.net(x)
            loss = nn.functional.mse_loss(out[:, -1].float(), y)
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        self.i += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(self.device)
        now = time.perf_counter()
        if self.last is not None and batch_idx > 0:  # batch 0's interval would span the epoch start
            self.t_template.append(now - self.last)
        with torch.enable_grad():
            self.step()
        sync(self.device)
        self.last = time.perf_counter()
        self.t_reference.append(self.last - now)


def build(args, size: str, batch: int, log_dir: str, extra: list[str] = (), diagnostics: bool = True):
    hidden, layers, window = SIZES[size]
    cli = main(
        [
            "--config", "configs/volatility.yaml", f"--trainer.logger.init_args.save_dir={log_dir}",
            f"--model.net.init_args.hidden_sizes={hidden}", f"--model.net.init_args.num_layers={layers}", f"--data.init_args.window={window}",
            f"--data.init_args.batch_size={batch}", f"--trainer.accelerator={args.accelerator}",
            f"--trainer.precision={args.precision}", "--trainer.max_epochs=1", *extra,
        ],
        run=False,
    )  # fmt: skip
    if not diagnostics:  # the config's forecasting.callbacks.* (not the prediction writer, idle in fit)
        keep = [c for c in cli.trainer.callbacks if not type(c).__module__.startswith(DIAGNOSTICS)]
        cli.trainer.callbacks[:] = keep
    return cli


def fit_quietly(trainer, model, datamodule) -> None:
    """The progress bar stays on (the template's default) but draws to /dev/null, not into the table."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        trainer.fit(model, datamodule)


def interleaved(args, size: str, batch: int, log_dir: str, extra: list[str] = (), diagnostics: bool = True) -> dict:
    cli = build(args, size, batch, log_dir, extra, diagnostics)
    dm = cli.datamodule
    dm.setup("fit")
    steps = min(args.steps or STEPS[size], len(dm.dataset("train")) // batch)
    cli.trainer.fit_loop.epoch_loop.max_steps = -1
    cli.trainer.limit_train_batches = steps
    cli.trainer.limit_val_batches = 1
    cli.trainer.num_sanity_val_steps = 0
    device = torch.device("cuda" if args.accelerator in ("cuda", "gpu") else "cpu")
    ref = ReferenceStep(copy.deepcopy(cli.model.net), dm.dataset("train"), batch, device, args.precision)
    cli.trainer.callbacks.append(ref)
    fit_quietly(cli.trainer, cli.model, dm)
    # t_template[j - 1] is batch j (j >= 1), t_reference[j] the reference step that followed it.
    a, b = ref.t_template[args.warmup - 1 :], ref.t_reference[args.warmup :]
    return {
        "steps": len(a),
        "template": len(a) * batch / sum(a),
        "reference": len(b) * batch / sum(b),
        "ratio": sum(b) / sum(a),
        "overhead_ms": 1000 * (sum(a) - sum(b)) / len(a),
        "median": statistics.median(rb / ra for ra, rb in zip(a, b, strict=True)),
    }


class HookTimer:
    """Wraps every hook of every callback of a trainer and adds up the time spent in it, per callback."""

    def __init__(self, trainer):
        self.train, self.other = {}, {}
        for callback in trainer.callbacks:
            name = type(callback).__name__
            for hook in dir(L.Callback):
                if hook.startswith("on_") and getattr(type(callback), hook) is not getattr(L.Callback, hook):
                    setattr(callback, hook, self.wrap(getattr(callback, hook), name, hook))

    def wrap(self, fn, name, hook):
        totals = self.train if hook in TRAIN_HOOKS else self.other

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

        return timed


class ReferenceEpoch:
    """One epoch of the hand-written loop plus a validation pass (loss only), for the end-to-end table."""

    def __init__(self, cli, device, precision):
        dm = cli.datamodule
        self.train, val = dm.dataset("train"), dm.dataset("val")
        self.ref = ReferenceStep(copy.deepcopy(cli.model.net), self.train, dm.batch_size, device, precision)
        self.val = ReferenceStep(self.ref.net, val, dm.batch_size, device, precision)

    def run(self) -> None:
        for _ in range(-(-len(self.train) // self.ref.batch_size)):
            self.ref.step()
        val, net = self.val, self.ref.net.eval()
        with torch.no_grad():
            for chunk in val.ends.split(val.batch_size):
                nn.functional.mse_loss(net(val.x[chunk - (val.window - 1)])[0][:, -1], val.y[chunk]).item()
        net.train()


def end_to_end(args, log_dir: str, repeats: int) -> dict:
    """Whole `trainer.fit` epochs of the default model at batch 64 against reference epochs, alternating."""
    device = torch.device("cuda" if args.accelerator in ("cuda", "gpu") else "cpu")
    template, reference = [], []
    for _ in range(repeats):
        cli = build(args, "default", 64, log_dir)
        hooks = HookTimer(cli.trainer)
        start = time.perf_counter()
        fit_quietly(cli.trainer, cli.model, cli.datamodule)
        sync(device)
        template.append(time.perf_counter() - start)
        epoch = ReferenceEpoch(cli, device, args.precision)
        start = time.perf_counter()
        epoch.run()
        sync(device)
        reference.append(time.perf_counter() - start)
    steps = -(-len(epoch.train) // 64)
    names = {**hooks.train, **hooks.other}
    return {
        "template": template, "reference": reference, "n_train": len(epoch.train), "n_val": len(epoch.val.ends),
        "hooks": {k: (hooks.train.get(k, 0.0) / steps, hooks.other.get(k, 0.0)) for k in names},
    }  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["default", "medium", "large"], choices=list(SIZES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256, 512])
    parser.add_argument("--steps", type=int, default=None, help=f"template steps per run (default per size: {STEPS})")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each run not timed")
    parser.add_argument("--epoch-repeats", type=int, default=2, help="end-to-end epochs (0: skip that table)")
    parser.add_argument("--no-variants", action="store_true", help="skip the diagnostics / progress bar off rows")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true", help="bf16-mixed on a GPU")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    begin(f"precision {args.precision}", threads=args.threads, accelerator=args.accelerator)
    quiet()
    variants = {  # default model, first batch size: what single switches cost
        "diagnostics off": ([], False),
        "diagnostics and progress bar off": (["--trainer.enable_progress_bar=false"], False),
    }
    rows = []
    with tempfile.TemporaryDirectory() as log_dir:
        for size in args.sizes:
            for batch in args.batch_sizes:
                rows.append((size, batch, "volatility.yaml as is", interleaved(args, size, batch, log_dir)))
                print(f"#   {size} batch {batch}: ratio {rows[-1][3]['ratio']:.3f}", flush=True)
        if not args.no_variants:
            for name, (extra, diagnostics) in variants.items():
                batch = args.batch_sizes[0]
                rows.append(("default", batch, name, interleaved(args, "default", batch, log_dir, extra, diagnostics)))
        epochs = end_to_end(args, log_dir, args.epoch_repeats) if args.epoch_repeats else None

    print("\nTable 1: steady-state training steps, template (a) and reference (b) alternating step by step\n")
    print("| model (hidden x layers, window) | batch | template | steps | (a) windows/s | (b) windows/s "
          "| ratio (a)/(b) | median paired ratio | (a) extra ms/step |")  # fmt: skip
    print("|:--|--:|:--|--:|--:|--:|--:|--:|--:|")
    for size, batch, name, r in rows:
        hidden, layers, window = SIZES[size]
        print(f"| {size} ({hidden} x {layers}, {window}) | {batch} | {name} | {r['steps']} | {r['template']:.0f} "
              f"| {r['reference']:.0f} | {r['ratio']:.3f} | {r['median']:.3f} | {r['overhead_ms']:.1f} |")  # fmt: skip
    if epochs:
        template, reference = min(epochs["template"]), min(epochs["reference"])
        n_train, n_val = epochs["n_train"], epochs["n_val"]
        print(f"\nTable 2: one whole epoch, default model, batch 64 ({n_train} training + {n_val} validation "
              f"windows), {len(epochs['template'])} alternating repeats, best of each\n")  # fmt: skip
        print("| what | seconds | training windows/s | ratio (a)/(b) |")
        print("|:--|--:|--:|--:|")
        what = "(a) template `trainer.fit`: startup, sanity check, epoch, validation, diagnostics, checkpoints"
        print(f"| {what} | {template:.2f} | {n_train / template:.0f} | {reference / template:.3f} |")
        print(f"| (b) reference: epoch + validation loss | {reference:.2f} | {n_train / reference:.0f} | 1 |")
        print("\nTable 3: time in each callback of (a), last repeat of Table 2: per training step (batch, backward "
              "and optimiser hooks) and per epoch (every other hook: setup, sanity check, validation, epoch "
              "end, checkpoint saving)\n")  # fmt: skip
        print("| callback | ms per training step | ms per epoch, other hooks |")
        print("|:--|--:|--:|")
        for name, (per_step, per_val) in sorted(epochs["hooks"].items(), key=lambda kv: -kv[1][0]):
            print(f"| {name} | {1e3 * per_step:.2f} | {1e3 * per_val:.1f} |")
    print(f"\n# load average at the end {os.getloadavg()[0]:.1f}")
