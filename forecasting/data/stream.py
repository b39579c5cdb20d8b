"""Stream mode (`data.mode: stream`): each series walked once per epoch, its state carried along.

Training. The training rows of every series (a ticker's clean, contiguous run of rows whose
targets lie in the training span) are cut into chunks of k = `model.tbptt_steps` steps, and
the chunks are dealt, in time order, to `batch_size` lanes: lane j holds a contiguous stretch
of chunks, so a batch is one chunk of every lane (B, k, F) and batch s+1 continues batch s in
time. The model carries each lane's state from batch to batch (detached) and zeroes it where
`reset` says a stream starts (the first chunk of a lane or of a new series). `pos` counts the
steps since that start, so the loss skips the burn-in at stream starts only, not per chunk
(-1 marks padding: rows past a series' end). Each epoch drops a random 0..k-1 first rows of
every series (seeded by seed + epoch), so the chunk boundaries move from epoch to epoch. The
number of batches per epoch is the same every epoch (a lane may end with padding).

Evaluation. val/test/predict score the same rows as windowed mode (windows.py: one forecast
per day per series, each day with `window` days of history), but a batch holds whole series,
from their first clean row to their last scored row: the network runs over each once, the
state warmed on every earlier day, and `at` (N, 2) says which (series, step) outputs are scored.

DDP: lanes are dealt across ranks (each rank the same number of lanes and batches); every rank
keeps the state of its own lanes. Evaluation series are shared out like windows are.
"""

import torch
from torch.utils.data import Dataset, DistributedSampler


def runs(series: torch.Tensor, keep: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of every maximal run of rows with `keep` inside one series."""
    keep = keep.bool()
    if len(series) == 0:
        return []
    other = torch.ones(len(series), dtype=torch.bool)  # row i+1 belongs to another run than row i
    other[:-1] = (series[1:] != series[:-1]) | ~keep[1:]
    starts = torch.nonzero(keep & torch.cat([torch.ones(1, dtype=torch.bool), other[:-1] | ~keep[:-1]]))
    ends = torch.nonzero(keep & other)
    return [(int(s), int(e - s + 1)) for s, e in zip(starts.flatten(), ends.flatten(), strict=True)]


class StreamDataset(Dataset):
    """Training batches of stream mode. Item s is batch s of the epoch set by `set_epoch`, for
    this rank's lanes (`shard`). See the module docstring."""

    def __init__(
        self, features, targets, target_loc, target_scale, pieces, k: int, lanes: int, seed: int = 0, scaler=None
    ):
        self.x, self.y, self.loc, self.scale = features, targets, target_loc, target_scale
        self.scaler = scaler  # windows.RowScaler: features are scaled as they are gathered (None: as they are)
        self.pieces, self.k, self.seed = [(s, n) for s, n in pieces if n > 0], k, seed
        self.max_chunks = sum(-(-n // k) for _, n in self.pieces)  # with no rows dropped: the most an epoch has
        self.lanes = max(1, min(lanes, self.max_chunks))
        self.steps = -(-self.max_chunks // self.lanes)
        self.rank, self.world = 0, 1
        self.set_epoch(0)

    def shard(self, rank: int, world: int) -> None:
        """This rank's lanes: every world-th. Lanes are rounded up to a multiple of world (extra
        lanes are all padding), so every rank has as many lanes and makes as many steps."""
        self.rank, self.world = rank, world
        self.lanes = -(-self.lanes // world) * world
        self.steps = -(-self.max_chunks // self.lanes)
        self.set_epoch(self.epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        g = torch.Generator().manual_seed(self.seed + epoch)
        chunks = []  # (first row, real rows, piece) in time order, piece after piece
        for p, (start, n) in enumerate(self.pieces):
            # Shift by up to k - 1 rows, but never below one whole chunk's rows (a series of exactly
            # k rows stays whole: one stream per series and k = its length is full BPTT).
            shift = int(torch.randint(0, max(1, min(self.k, n - self.k + 1)), (1,), generator=g))
            for c in range(start + shift, start + n, self.k):
                chunks.append((c, min(self.k, start + n - c), p))
        total, lanes = len(chunks), self.lanes
        self.start = torch.zeros(lanes, self.steps, dtype=torch.long)
        self.length = torch.zeros(lanes, self.steps, dtype=torch.long)  # 0: padding
        self.pos0 = torch.zeros(lanes, self.steps, dtype=torch.long)
        for lane in range(lanes):
            mine = chunks[lane * total // lanes : (lane + 1) * total // lanes]
            for s, (c, n, p) in enumerate(mine):
                same = s > 0 and mine[s - 1][2] == p
                self.start[lane, s], self.length[lane, s] = c, n
                self.pos0[lane, s] = self.pos0[lane, s - 1] + self.k if same else 0

    def __len__(self) -> int:
        return self.steps

    def __getitems__(self, indices) -> dict:
        """Batch `indices[0]` (several indices: their lanes side by side, as check_batch asks)."""
        parts = [self.batch(int(i)) for i in indices]
        if len(parts) == 1:
            return parts[0]
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}

    def batch(self, step: int) -> dict:
        mine = torch.arange(self.rank, self.lanes, self.world)
        start, length, pos0 = self.start[mine, step], self.length[mine, step], self.pos0[mine, step]
        offset = torch.arange(self.k)
        real = offset[None, :] < length[:, None]
        rows = (start[:, None] + offset[None, :]).clamp(max=len(self.x) - 1)
        rows = torch.where(real, rows, 0)
        x = self.x[rows] if self.scaler is None else self.scaler(self.x[rows], rows, inplace=True)
        x = torch.where(real[..., None], x, 0.0)  # padding: zeros (row 0 may hold NaN)
        y = torch.where(real[..., None], self.y[rows], 0.0)
        last = rows.gather(1, (length - 1).clamp(min=0)[:, None])[:, 0]
        return {
            "x": x,
            "y": y,
            "pos": torch.where(real, pos0[:, None] + offset[None, :], -1),  # steps since the stream began
            "reset": (pos0 == 0) | (length == 0),  # a stream starts here: zero the lane's state first
            "y_loc": self.loc[last, None],
            "y_scale": self.scale[last, None],
            "row": torch.where(length > 0, last, -1),
        }

    def __getitem__(self, index: int) -> dict:
        return self.batch(index)


class StreamSampler(DistributedSampler):
    """Batches 0..steps-1 in order, from `first` (a mid-epoch resume). A DistributedSampler so
    that Lightning does not wrap it in one of its own under DDP (the dataset shards by lane)."""

    def __init__(self, dataset: StreamDataset, rank: int = 0, world: int = 1):
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=False)
        dataset.shard(rank, world)
        self.first = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if epoch != self.dataset.epoch:
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        first, self.first = self.first, 0  # a resume skips the batches done only once
        return iter(range(first, len(self.dataset)))


class EvalStreams(Dataset):
    """val/test/predict in stream mode: item i is series i, run from `starts[i]` to its last
    scored row; `ends[i]` (kept as `scored`) are its scored rows, the ones windowed mode scores."""

    def __init__(
        self, features, targets, target_loc, target_scale, starts, ends, baselines=None, risk=None, scaler=None
    ):
        self.x, self.y, self.loc, self.scale = features, targets, target_loc, target_scale
        self.scaler = scaler  # windows.RowScaler (None: features as they are)
        self.starts, self.scored = starts, ends
        self.baselines, self.risk_baselines = baselines or {}, risk or {}

    @property
    def ends(self) -> torch.Tensor:
        """Every scored row, as WindowDataset.ends (the rows windowed mode forecasts)."""
        return torch.cat(self.scored) if self.scored else torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitems__(self, indices) -> dict:
        indices = [int(i) for i in indices]
        lengths = [int(self.scored[i][-1]) - self.starts[i] + 1 for i in indices]
        x = torch.zeros(len(indices), max(lengths), self.x.shape[1])  # right-padded: no effect on earlier steps
        at, rows = [], []
        for lane, (i, n) in enumerate(zip(indices, lengths, strict=True)):
            run = self.x[self.starts[i] : self.starts[i] + n]  # one clean run of one series
            x[lane, :n] = run if self.scaler is None else self.scaler(run, torch.tensor([self.starts[i]]))
            rows.append(self.scored[i])
            at.append(torch.stack([torch.full_like(self.scored[i], lane), self.scored[i] - self.starts[i]], 1))
        rows = torch.cat(rows)
        return {
            "x": x,
            "at": torch.cat(at),  # (N, 2): (lane, step) of each scored forecast
            "y": self.y[rows],
            "y_loc": self.loc[rows, None],
            "y_scale": self.scale[rows, None],
            "row": rows,
            "baselines": {name: values[rows] for name, values in self.baselines.items()},
            **({"risk_baselines": {k: v[rows] for k, v in self.risk_baselines.items()}} if self.risk_baselines else {}),
        }


def eval_streams(
    features, targets, loc, scale, series, bad, ends, baselines=None, risk=None, scaler=None
) -> EvalStreams:
    """Group the scored rows `ends` by the clean run they lie in (see `runs`)."""
    starts, grouped = [], []
    for start, n in runs(series, ~bad):
        inside = ends[(ends >= start) & (ends < start + n)].long()
        if len(inside):
            starts.append(start)
            grouped.append(inside)
    return EvalStreams(features, targets, loc, scale, starts, grouped, baselines, risk, scaler)


def scored(out: torch.Tensor, batch: dict) -> torch.Tensor:
    """Outputs (B, T, ...) at the steps a batch scores: each window's last step, or in stream mode
    the (lane, step) pairs `at` names."""
    if "at" in batch:
        return out[batch["at"][:, 0], batch["at"][:, 1]]
    return out[:, -1]


def as_windows(batch: dict, window: int, limit: int) -> dict:
    """The first `limit` scored steps of an evaluation batch as windows of `window` steps, the
    shape the fixed-batch diagnostics measure on (gradient flow over the window, gates)."""
    at = batch["at"][:limit]
    start = (at[:, 1] - (window - 1)).clamp(min=0)
    steps = start[:, None] + torch.arange(window, device=at.device)[None, :]
    steps = steps.clamp(max=batch["x"].shape[1] - 1)
    out = {"x": batch["x"][at[:, 0, None], steps]}
    out.update({k: batch[k][:limit] for k in ("y", "y_loc", "y_scale", "row")})
    return out
