"""Under DDP, each rank loads only its share of the tickers (data.shard_by_rank: true).

The share: the file's ticker names (the ticker column alone is read), sorted, cut into world-size
contiguous blocks holding about equal numbers of rows; rank r takes block r. Contiguous sorted blocks
mean the ranks' rows, concatenated in rank order, are exactly the one-process rows, so statistics
that need every row (the HAR baseline's regression, a robust scaler's quantiles) come out the same.
With fewer tickers than ranks (one long series, say) there is nothing to split: every rank loads
everything, as without sharding.

Collectives go through `gather(obj)`: every rank's `obj` in rank order (torch.distributed's
all_gather_object; gloo or NCCL alike).
"""

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


def world() -> tuple[int, int]:
    """(rank, world size) of the running process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(obj) -> list:
    """Every rank's `obj`, in rank order (a list of one without a process group)."""
    rank, size = world()
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out


def split(names: list[str], rows: list[int], parts: int) -> list[list[str]] | None:
    """Sorted `names` (with their row counts) cut into `parts` contiguous blocks of about equal rows,
    each holding at least one name; None when there are fewer names than parts."""
    if len(names) < parts:
        return None
    order = np.argsort(np.asarray(names, dtype=object), kind="stable")
    names, rows = [names[i] for i in order], np.asarray(rows, dtype=np.float64)[order]
    ends = np.cumsum(rows)
    cuts = [0]
    for k in range(1, parts):
        cut = int(np.argmin(np.abs(ends - ends[-1] * k / parts))) + 1  # the nearest ticker boundary
        # at least one name per block, and room for one per later block
        cuts.append(min(max(cut, cuts[-1] + 1), len(names) - (parts - k)))
    cuts.append(len(names))
    return [names[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


class LocalSampler(DistributedSampler):
    """This rank's own samples, all of them (its data set already is its share). A DistributedSampler
    subclass, so Lightning does not shard them again. `length`: samples per epoch, equal on every rank
    so that every rank makes as many steps (the shortest ranks repeat some samples, as Lightning's
    DistributedSampler does); `shuffle` draws them in an order fixed by (seed, epoch)."""

    def __init__(self, dataset, length: int | None = None, shuffle: bool = False, seed: int = 0):
        self.dataset, self.shuffle, self.seed, self.epoch = dataset, shuffle, seed, 0
        self.num_samples = self.total_size = len(dataset) if length is None else length
        self.num_replicas, self.rank, self.drop_last = 1, 0, False

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        repeats = -(-self.num_samples // max(n, 1))
        return iter(order.repeat(repeats)[: self.num_samples].tolist())

    def __len__(self) -> int:
        return self.num_samples
