"""Lightning's DDP on CPU (gloo, 2 processes): sharding, one gradient sync per optimiser step,
the same weights and val/loss as one process with the same global batch, and a CLI fit.

In-process runs fork their 2 processes from pytest (DDPStrategy(start_method="fork"), alias
ddp_fork): `strategy="ddp"` would re-run pytest in the second process, and "spawn" re-imports torch
and Lightning in each process (about 15 s a test here, against 1 s). Each rank runs exactly what
`ddp` runs; only the launcher differs. The CLI tests are subprocesses with configs/ddp_cpu.yaml.
"""

import copy
import functools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import DataLoader, DistributedSampler

from forecasting.callbacks.prediction_writer import PredictionWriter
from forecasting.data.base import keep_batch
from forecasting.data.datamodule import PriceDataModule
from forecasting.models.forecaster import Forecaster
from tests.conftest import ROOT, dm_kwargs, make_prices
from tests.nets import lstm

SEED, B = 7, 8  # B: batch size PER RANK; the single-process reference uses 2 * B


class Record(Callback):
    """Each rank writes the training windows it saw and its gradient all-reduces to <out>/rank<r>.json."""

    def __init__(self, out: Path):
        self.out = out

    def on_train_start(self, trainer, pl_module):
        self.rows, self.allreduces = [], 0

        def count(state, bucket):  # DDP calls this once per gradient bucket it all-reduces
            self.allreduces += 1
            return default_hooks.allreduce_hook(state, bucket)

        # Lightning registers comm hooks on CUDA only; on CPU we do it ourselves (test only).
        trainer.strategy.model.register_comm_hook(None, count)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows += batch["row"].tolist()

    def on_train_epoch_end(self, trainer, pl_module):
        record = {"rows": self.rows, "allreduces": self.allreduces, "steps": trainer.global_step}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Each DDP rank runs one torch thread (Lightning: cores / processes); so does the one-process
    reference. Tiny models gain nothing from more, and two OpenMP threads on a busy 2-core machine
    spin-wait: a 0.2 s fit took 12 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fork() -> DDPStrategy:
    """Forked ranks cannot use CUDA once this process has initialised it (on a GPU machine, earlier
    tests that trained on the GPU did), and Lightning reads every CUDA RNG state in each rank."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        pytest.skip("CUDA is initialised in this process: run tests/test_ddp.py on its own on a GPU machine")
    return DDPStrategy(start_method="fork")


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, deterministic=True, **kwargs,
    )  # fmt: skip


def data(tmp_path, n_days=100, tickers=("AAA", "BBB"), **kwargs) -> PriceDataModule:
    path = tmp_path / "prices.csv"
    make_prices(n_days, tickers).to_csv(path, index=False)
    return PriceDataModule(**dm_kwargs(path, **kwargs))


def model(dm: PriceDataModule, **kwargs) -> Forecaster:
    torch.manual_seed(0)
    # SGD (no per-parameter state) and no dropout: the update is a plain function of the mean gradient.
    sgd = functools.partial(torch.optim.SGD, lr=0.1)  # picklable, should a test switch to "spawn"
    return Forecaster(n_features=dm.n_features, net=lstm(hidden_sizes=8, dropout=0.0), optimizer=sgd, **kwargs)


@pytest.mark.parametrize("tbptt_steps", [None, 8], ids=["full_bptt", "tbptt"])
def test_ddp_matches_one_process_with_twice_the_batch(tmp_path, tbptt_steps):
    L.seed_everything(SEED)  # also the seed of the DistributedSampler Lightning injects (PL_GLOBAL_SEED)
    dense = tbptt_steps is not None
    dm = data(tmp_path, batch_size=B, dense_targets=dense)
    ddp_model = model(dm, tbptt_steps=tbptt_steps, burn_in=4)
    one_model = copy.deepcopy(ddp_model)

    # 2 ranks, per-rank batch B. The data module's loader is plain (shuffle=True), so Lightning swaps
    # in DistributedSampler(shuffle=True, seed=SEED): one permutation `perm` of all windows, shared by
    # the ranks; rank r takes perm[r::2], so step k's global batch is perm[2kB : 2(k+1)B], split
    # between the ranks. DDP averages the two ranks' mean gradients: the mean over those 2B windows.
    ddp = trainer(devices=2, strategy=fork(), callbacks=[Record(tmp_path)])
    ddp.fit(ddp_model, datamodule=dm)  # Lightning loads rank 0's weights back into ddp_model

    # 1 process, batch 2B, in the same order: perm itself (a DistributedSampler with one replica).
    dm.setup("fit")
    train = dm.dataset("train")
    order = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=SEED)
    loader = DataLoader(train, batch_size=2 * B, sampler=order, collate_fn=keep_batch)
    one = trainer(devices=1)
    one.fit(one_model, train_dataloaders=loader, val_dataloaders=dm.val_dataloader())

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # Sharding: every training window exactly once per epoch (84 windows: no padding needed).
    seen = Counter(ranks[0]["rows"] + ranks[1]["rows"])
    assert len(train) == 84 and sorted(seen) == sorted(train.ends.tolist()) and set(seen.values()) == {1}
    assert not set(ranks[0]["rows"]) & set(ranks[1]["rows"])
    # One gradient all-reduce per optimiser step on each rank (the model fits in one bucket).
    steps = 6 * (1 if tbptt_steps is None else 16 // tbptt_steps)  # ceil(84 / 16) batches
    assert [r["steps"] for r in ranks] == [steps, steps] == [one.global_step] * 2
    assert [r["allreduces"] for r in ranks] == [steps, steps]
    # Same weights, and they moved.
    start = model(dm, tbptt_steps=tbptt_steps, burn_in=4).state_dict()
    for name, value in one_model.state_dict().items():
        torch.testing.assert_close(ddp_model.state_dict()[name], value, rtol=0, atol=1e-6)  # seen: 3e-8
    assert (one_model.state_dict()["net.layers.0.weight_hh_l0"] - start["net.layers.0.weight_hh_l0"]).abs().max() > 1e-3
    # The same validation loss, reduced over both ranks' halves of the validation windows.
    val = float(one.callback_metrics["val/loss"])
    assert float(ddp.callback_metrics["val/loss"]) == pytest.approx(val, rel=1e-6)
    assert float(ddp.callback_metrics["val/mae"]) == pytest.approx(float(one.callback_metrics["val/mae"]), rel=1e-6)


def test_uneven_split_sizes(tmp_path):
    """129 training, 57 validation and 255 predict windows: none splits evenly over 2 ranks."""
    dm = data(tmp_path, n_days=101, tickers=("AAA", "BBB", "CCC"), test_start=0.79, batch_size=B)
    net = model(dm)
    ddp = trainer(devices=2, strategy=fork(), callbacks=[Record(tmp_path)])
    ddp.fit(net, datamodule=dm)

    dm.setup("fit")
    train, val = dm.dataset("train"), dm.dataset("val")
    assert (len(train), len(val)) == (129, 57)
    # Training needs the same number of steps on every rank, so Lightning's DistributedSampler
    # repeats one window (at most ranks - 1 per epoch): every window is seen, one of them twice.
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    seen = Counter(ranks[0]["rows"] + ranks[1]["rows"])
    assert len(ranks[0]["rows"]) == len(ranks[1]["rows"]) == 65
    assert sorted(seen) == sorted(train.ends.tolist()) and sorted(seen.values()) == [1] * 128 + [2]
    # Evaluation needs no equal counts: each validation window is scored once, on one rank, so the
    # reduced val/loss equals one process validating the same weights (net holds rank 0's).
    one = trainer(devices=1)
    one.validate(net, datamodule=dm, verbose=False)
    for name in ("val/loss", "val/mae", "val/rmse_orig"):
        assert float(ddp.callback_metrics[name]) == pytest.approx(float(one.callback_metrics[name]), rel=1e-6)

    # predict: each rank forecasts its share of the windows (Lightning splits them without repeats);
    # the writer gathers them and rank 0 writes one CSV, the same as one process writes.
    trainer(devices=2, strategy=fork(), callbacks=[PredictionWriter(str(tmp_path / "ddp.csv"))]).predict(net, dm)
    trainer(devices=1, callbacks=[PredictionWriter(str(tmp_path / "one.csv"))]).predict(net, dm)
    ddp_csv, one_csv = (pd.read_csv(tmp_path / f"{name}.csv") for name in ("ddp", "one"))
    assert len(ddp_csv) == 3 * (101 - 16) and not ddp_csv.duplicated(["date", "ticker"]).any()
    pd.testing.assert_frame_equal(ddp_csv, one_csv)


def cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """`python -m forecasting ...` with configs/ddp_cpu.yaml: Lightning launches the second process."""
    overlays = ("volatility", "ddp_cpu", "debug")
    configs = [arg for name in overlays for arg in ("--config", f"{ROOT}/configs/{name}.yaml")]
    cmd = [
        sys.executable, "-m", "forecasting", args[0], *configs, *args[1:],
        "--data.init_args.path", str(tmp_path / "prices.csv"), "--data.init_args.adjust_column", "null",
        "--data.init_args.window", "16", "--data.init_args.val_start", "0.6", "--data.init_args.test_start", "0.8",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.parametrize("tbptt_steps", [None, 8], ids=["full_bptt", "tbptt"])
def test_cli_fit_under_ddp_writes_one_run(tmp_path, tbptt_steps):
    make_prices().to_csv(tmp_path / "prices.csv", index=False)
    mode = [] if tbptt_steps is None else ["--model.tbptt_steps", str(tbptt_steps), "--model.burn_in", "4"]
    cli(tmp_path, "fit", *mode)
    # Only rank 0 writes: one version folder, one event file, one config, one set of checkpoints.
    (run,) = (tmp_path / "logs" / "volatility").iterdir()
    assert run.name == "version_0" and len(list(run.glob("events.out.tfevents.*"))) == 1
    assert (run / "config.yaml").is_file() and (run / "hparams.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert len(list((run / "checkpoints").glob("epoch000-val_loss*.ckpt"))) == 1
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # 324 training windows, 162 per rank: 3 batches of 64 (one process: 6), x 2 chunks with tbptt
    assert ckpt["global_step"] == 3 * (1 if tbptt_steps is None else 16 // tbptt_steps)
    assert ckpt["hyper_parameters"]["tbptt_steps"] == tbptt_steps
    scalars = EventAccumulator(str(run)).Reload().Tags()["scalars"]
    assert {"train/loss_step", "val/loss", "val/mae"} <= set(scalars)
