"""Zero-copy sliding windows over one contiguous tensor holding every series.

All tickers are stacked row-wise into one (rows, features) float32 tensor of unscaled
features (the data module's frame shares it). A window is a strided view of it (no
copy); a batch is gathered from that view in one indexing call and scaled there
(`RowScaler`). Memory stays one copy of the rows, never O(rows x window).
"""

import numpy as np
import torch
from torch.utils.data import Dataset


def window_view(values: torch.Tensor, window: int) -> torch.Tensor:
    """(rows, F) -> (rows - window + 1, window, F) view; view[s] covers rows s..s+window-1."""
    return values.unfold(0, window, 1).transpose(1, 2)


class RowScaler:
    """(x - center) / scale of gathered rows, in float32: each batch is scaled as it is gathered,
    instead of a scaled copy of every row (the unscaled rows are the data module's one copy).
    center, scale: (groups, F); one group (one scaler for all), or one per ticker, each row's group
    being `series_group[series[row]]`."""

    def __init__(self, center, scale, series: torch.Tensor | None = None, series_group: torch.Tensor | None = None):
        self.center = torch.as_tensor(np.asarray(center, dtype=np.float32))
        self.scale = torch.as_tensor(np.asarray(scale, dtype=np.float32))
        self.series, self.series_group = series, series_group

    def __call__(self, values: torch.Tensor, rows: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """values (..., F) gathered at `rows` (broadcastable to values.shape[:-1]): scaled, as a new
        tensor (`inplace`: in `values` itself, a gathered copy of the rows, never a view of them)."""
        if self.series is None:
            center, scale = self.center[0], self.scale[0]
        else:
            group = self.series_group[self.series[rows.long()].long()]
            center, scale = self.center[group], self.scale[group]
        return (values.sub_(center) if inplace else torch.sub(values, center)).div_(scale)


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

    features: (rows, F) inputs, scaled batch by batch by `scaler` (a RowScaler; None: used as
    they are).  targets: (rows, H) scaled targets, row t holding the H values after day t (NaN
    where unknown).  target_loc/scale: (rows,) undo the target scaling.  baselines: name ->
    (rows, H) forecasts in original units (see baselines.py), carried so the model is scored
    against them on the same windows; risk_baselines: name -> (rows, H, n_params) forecast
    distributions (risk_baselines.py).  With `dense=True` a sample carries the target of every
    step of its window (for losses over all steps), else of its last step.
    """

    def __init__(
        self, features, targets, target_loc, target_scale, ends, window: int, dense: bool = False, baselines=None,
        risk_baselines=None, scaler=None,
    ):  # fmt: skip
        self.x = window_view(features, window)
        self.scaler = scaler
        self.y = window_view(targets, window) if dense else targets
        self.target_loc, self.target_scale = target_loc, target_scale
        self.ends, self.window, self.dense = ends, window, dense
        self.baselines = baselines or {}
        self.risk_baselines = risk_baselines or {}

    def __len__(self) -> int:
        return len(self.ends)

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        end = self.ends[torch.as_tensor(indices, dtype=torch.long)].long()  # ends may be stored as int32
        start = end - (self.window - 1)
        x = self.x[start]  # a gathered copy: scaled in place
        return {
            "x": x if self.scaler is None else self.scaler(x, end[:, None], inplace=True),
            "y": self.y[start] if self.dense else self.y[end],
            "y_loc": self.target_loc[end, None],
            "y_scale": self.target_scale[end, None],
            "row": end,
            "baselines": {name: values[end] for name, values in self.baselines.items()},
            **({"risk_baselines": {k: v[end] for k, v in self.risk_baselines.items()}} if self.risk_baselines else {}),
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([index])
        nested = ("baselines", "risk_baselines")
        for key in nested:
            if key in batch:
                batch[key] = {k: v[0] for k, v in batch[key].items()}
        return {k: v if k in nested else v[0] for k, v in batch.items()}
