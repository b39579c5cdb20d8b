"""The data contract: what every data module gives the model, the CLI and `predict`.

Subclass `ForecastData` and provide:

    n_features: int          inputs per time step   } linked into the model by the CLI,
    horizon: int             targets per sample     } known without reading any file
    target_kind: str         "log_variance" (adds QLIKE), "return" (adds the hit rate) or "other"
    target: str              the target's name (CSV column of `predict`)
    dense_targets: bool      set by the CLI: training samples need a target at EVERY step
                             (truncated BPTT, dense loss); refuse it in __init__ if you cannot
    dataset(stage) -> Dataset    stage in train / val / test / predict

A dataset item is a dict (see `Batch`) or an `(x, y)` tuple; `row` defaults to the item's
index and `y_loc`/`y_scale` to 0/1 (unscaled targets). A dataset may instead return whole
batches from `__getitems__(indices)` (windows.py does: one gather per batch).
`describe_rows(rows, stage)` names the samples in `predict`'s CSV: the default writes the
sample index; override it to add dates and tickers (PriceDataModule does).

`check(dm)` and `check_batch(dm, stage)` refuse a module that misses part of this in one line,
before training starts. The loaders (one place for all modules) shuffle training samples in an
order fixed by (seed, epoch), and under DDP give each val/test sample to exactly one rank.
"""

import os
from typing import TypedDict

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch.utils.data._utils.collate import default_collate

from forecasting.errors import ForecastingError


class Batch(TypedDict, total=False):
    x: torch.Tensor  # (B, T, n_features) inputs, scaled
    y: torch.Tensor  # (B, horizon) targets of the last step, or (B, T, horizon) with dense_targets
    y_loc: torch.Tensor  # (B, 1): original units = y * y_scale + y_loc (default 0)
    y_scale: torch.Tensor  # (B, 1) (default 1)
    row: torch.Tensor  # (B,) int64 sample ids: describe_rows turns them into dates and tickers
    baselines: dict[str, torch.Tensor]  # optional: name -> (B, horizon) forecasts in original units


def as_batch(batch, indices) -> Batch:
    """A user's collated items as a Batch: (x, y) tuples become dicts, defaults filled in."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        batch = {"x": batch[0], "y": batch[1]}
    if not isinstance(batch, dict):
        raise ForecastingError(
            f"data: a dataset item is a {type(batch).__name__}; return a dict with 'x' and 'y' "
            "(forecasting/data/base.py, Batch) or an (x, y) tuple"
        )
    y = batch.get("y")
    if isinstance(y, torch.Tensor) and y.dim() == 1:
        batch["y"] = y = y[:, None]  # one target per sample
    batch.setdefault("row", torch.as_tensor(list(indices), dtype=torch.long))
    if isinstance(y, torch.Tensor):
        batch.setdefault("y_loc", torch.zeros(len(y), 1))
        batch.setdefault("y_scale", torch.ones(len(y), 1))
    return batch


class Batches(Dataset):
    """Wraps a dataset of single items so that a batch is fetched in one call, as a Batch."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices) -> Batch:
        return as_batch(default_collate([self.dataset[i] for i in indices]), indices)


def take(dataset: Dataset, indices) -> Batch:
    """One batch of the given sample indices from any contract dataset."""
    indices = [int(i) for i in indices]
    if hasattr(dataset, "__getitems__"):
        return dataset.__getitems__(indices)
    return Batches(dataset).__getitems__(indices)


class EpochRandomSampler(RandomSampler):
    """Shuffles in an order fixed by (seed, epoch) alone, so a run resumed at an epoch
    boundary sees the same batches as one never stopped. Lightning calls `set_epoch`;
    under DDP it swaps this for its DistributedSampler, which seeds the same way."""

    def __init__(self, data_source, seed: int = 0):
        super().__init__(data_source, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


def keep_batch(batch):
    """collate_fn for datasets whose `__getitems__` already returns a batch."""
    return batch


class ForecastData(L.LightningDataModule):
    """The base every data module of this template subclasses; see the module docstring."""

    target_kind = "other"
    target = "target"
    dense_targets = False
    batch_size = 64
    num_workers = 0

    def dataset(self, stage: str) -> Dataset:
        raise NotImplementedError

    def describe_rows(self, rows: torch.Tensor, stage: str = "predict") -> pd.DataFrame:
        """One row per sample id: the columns `predict` writes before its forecasts."""
        return pd.DataFrame({"sample": rows.numpy()})

    def train_sampler(self, dataset: Dataset):
        # seed_everything records its seed in PL_GLOBAL_SEED: shuffles follow it.
        return EpochRandomSampler(dataset, int(os.environ.get("PL_GLOBAL_SEED", 0)))

    def eval_sampler(self, dataset: Dataset, ranks: dict):
        """Under DDP, which val/test samples this rank scores (`ranks`: Lightning's num_replicas, rank)."""
        return UnrepeatedDistributedSampler(dataset, shuffle=False, **ranks)

    def loader(self, stage: str) -> DataLoader:
        dataset = self.dataset(stage)
        if not hasattr(dataset, "__getitems__"):
            dataset = Batches(dataset)
        sampler = self.train_sampler(dataset) if stage == "train" else None
        ranks = getattr(self.trainer.strategy, "distributed_sampler_kwargs", None) if self.trainer else None
        if stage in ("val", "test") and ranks and ranks["num_replicas"] > 1:
            # Under DDP Lightning's DistributedSampler repeats up to (ranks - 1) samples so that every
            # rank gets as many, which biases val/loss. Evaluation needs no equal counts: give each
            # sample to one rank. Training (equal steps needed) and predict keep Lightning's samplers.
            sampler = self.eval_sampler(dataset, ranks)
        # On a GPU, page-locked batches let Lightning's non_blocking copy to the device run asynchronously.
        pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=pin,
        )

    def train_dataloader(self):
        return self.loader("train")

    def val_dataloader(self):
        return self.loader("val")

    def test_dataloader(self):
        return self.loader("test")

    def predict_dataloader(self):
        return self.loader("predict")


def check(dm, where: str = "data") -> None:
    """Refuse, in one line, a data module that misses part of the contract (no I/O: runs at start-up)."""
    name = type(dm).__qualname__
    missing = [a for a in ("n_features", "horizon") if not isinstance(getattr(dm, a, None), int)]
    if not callable(getattr(dm, "dataset", None)) or type(dm).dataset is ForecastData.dataset:
        missing.append("dataset(stage)")
    if not isinstance(dm, ForecastData):
        missing += [a for a in ("describe_rows", "train_dataloader") if not callable(getattr(dm, a, None))]
    if missing:
        raise ForecastingError(
            f"{where}: {name} lacks {', '.join(missing)} of the data contract; subclass "
            "forecasting.data.base.ForecastData and provide them (docs/own_data_module.md)"
        )
    for attr in ("n_features", "horizon"):
        if getattr(dm, attr) < 1:
            raise ForecastingError(f"{where}: {name}.{attr} is {getattr(dm, attr)}; it must be a positive integer")
    if getattr(dm, "target_kind", "other") not in ("log_variance", "return", "other"):
        raise ForecastingError(f"{where}: {name}.target_kind must be 'log_variance', 'return' or 'other'")


def check_batch(dm, stage: str, dense: bool = False) -> None:
    """Fetch two samples of `stage` and check the batch against the sizes the model was built with."""
    split = {"fit": "train", "validate": "val"}.get(stage, stage)
    name = type(dm).__qualname__
    dataset = dm.dataset(split)
    if len(dataset) == 0:
        raise ForecastingError(f"data: {name}.dataset('{split}') is empty")
    batch = take(dataset, range(min(2, len(dataset))))
    needed = ("x", "y", "y_loc", "y_scale", "row")
    if not isinstance(batch, dict) or not all(isinstance(batch.get(k), torch.Tensor) for k in needed):
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ForecastingError(
            f"data: {name}.dataset('{split}') gives batches with {keys}; a batch needs tensors {list(needed)} "
            "(forecasting/data/base.py, Batch)"
        )
    x, y = batch["x"], batch["y"]
    if x.dim() != 3 or x.shape[-1] != dm.n_features:
        raise ForecastingError(
            f"data: {name}.dataset('{split}') gives x of shape {tuple(x.shape)}; expected (batch, time, "
            f"{dm.n_features}) with n_features={dm.n_features}"
        )
    want = 3 if dense and split == "train" else 2
    if y.dim() != want or y.shape[-1] != dm.horizon:
        shape = "(batch, time, horizon)" if want == 3 else "(batch, horizon)"
        raise ForecastingError(
            f"data: {name}.dataset('{split}') gives y of shape {tuple(y.shape)}; expected {shape} "
            f"with horizon={dm.horizon}" + (" (dense_targets is on: a target at every step)" if want == 3 else "")
        )
