"""Zero-copy sliding windows over one contiguous tensor holding every series.

All tickers are stacked row-wise into one (rows, features) float32 tensor. A
window is a strided view of it (no copy); a batch is gathered from that view in
one indexing call. Memory stays O(rows x features), never O(rows x window).
"""

import os

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, RandomSampler


def window_view(values: torch.Tensor, window: int) -> torch.Tensor:
    """(rows, F) -> (rows - window + 1, window, F) view; view[s] covers rows s..s+window-1."""
    return values.unfold(0, window, 1).transpose(1, 2)


def valid_ends(series_id: torch.Tensor, bad: torch.Tensor, window: int) -> torch.Tensor:
    """Row indices e whose window e-window+1..e stays in one series and holds no bad row."""
    n = len(series_id)
    if n < window:
        return torch.empty(0, dtype=torch.long)
    ends = torch.arange(window - 1, n)
    bad_count = torch.cat([torch.zeros(1, dtype=torch.long), bad.long().cumsum(0)])
    clean = bad_count[ends + 1] - bad_count[ends + 1 - window] == 0
    same = series_id[ends] == series_id[ends + 1 - window]
    return ends[clean & same]


class WindowDataset(Dataset):
    """Windows ending at `ends`; `__getitems__` fetches a whole batch in one gather.

    features: (rows, F) scaled inputs.  targets: (rows, H) scaled targets, row t
    holding the H values after day t (NaN where unknown).  target_loc/scale: (rows,)
    undo the target scaling.  baselines: name -> (rows, H) forecasts in original units
    (see baselines.py), carried so the model is scored against them on the same
    windows.  With `dense=True` a sample carries the target of
    every step of its window (for losses over all steps), else of its last step.
    """

    def __init__(
        self, features, targets, target_loc, target_scale, ends, window: int, dense: bool = False, baselines=None
    ):
        self.x = window_view(features, window)
        self.y = window_view(targets, window) if dense else targets
        self.target_loc, self.target_scale = target_loc, target_scale
        self.ends, self.window, self.dense = ends, window, dense
        self.baselines = baselines or {}

    def __len__(self) -> int:
        return len(self.ends)

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        end = self.ends[torch.as_tensor(indices, dtype=torch.long)]
        start = end - (self.window - 1)
        return {
            "x": self.x[start],
            "y": self.y[start] if self.dense else self.y[end],
            "y_loc": self.target_loc[end, None],
            "y_scale": self.target_scale[end, None],
            "row": end,
            "baselines": {name: values[end] for name, values in self.baselines.items()},
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([index])
        batch["baselines"] = {k: v[0] for k, v in batch["baselines"].items()}
        return {k: v if k == "baselines" else v[0] for k, v in batch.items()}


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
    """collate_fn for `WindowDataset`: `__getitems__` already returns a batch."""
    return batch


class BatchLoaders(L.LightningDataModule):
    """The four dataloaders of a data module whose datasets return whole batches (`__getitems__`).
    A subclass provides `dataset(stage)` and sets `batch_size` (and `num_workers`, default 0)."""

    num_workers = 0

    def dataset(self, stage: str) -> Dataset:
        raise NotImplementedError

    def train_sampler(self, dataset: Dataset):
        # seed_everything records its seed in PL_GLOBAL_SEED: shuffles follow it.
        return EpochRandomSampler(dataset, int(os.environ.get("PL_GLOBAL_SEED", 0)))

    def loader(self, stage: str) -> DataLoader:
        dataset = self.dataset(stage)
        sampler = self.train_sampler(dataset) if stage == "train" else None
        ranks = getattr(self.trainer.strategy, "distributed_sampler_kwargs", None) if self.trainer else None
        if stage in ("val", "test") and ranks and ranks["num_replicas"] > 1:
            # Under DDP Lightning's DistributedSampler repeats up to (ranks - 1) windows so that every
            # rank gets as many, which biases val/loss. Evaluation needs no equal counts: give each
            # window to one rank. Training (equal steps needed) and predict keep Lightning's samplers.
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False, **ranks)
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
