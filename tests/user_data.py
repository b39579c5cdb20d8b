"""A data module as a user writes one for their own data (sensor readings, say): one file,
outside forecasting/, a plain Dataset of (x, y) tuples. See docs/own_data_module.md."""

import torch
from torch.utils.data import Dataset

from forecasting.data.base import ForecastData


class Sines(Dataset):
    """Noisy sines; the target is the next value of the first channel."""

    def __init__(self, n: int, window: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        t = torch.arange(window + 1) * 0.3 + torch.rand(n, 1, generator=g) * 6.28
        series = torch.stack([torch.sin(t), torch.cos(t)], dim=2) + 0.05 * torch.randn(n, window + 1, 2, generator=g)
        self.x, self.y = series[:, :-1], series[:, -1, :1]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class SineDataModule(ForecastData):
    n_features, horizon = 2, 1  # the sizes the CLI links into the model

    def __init__(self, window: int = 20, batch_size: int = 16, dense_targets: bool = False):
        super().__init__()
        self.window, self.batch_size = window, batch_size
        self.splits = {"train": (256, 0), "val": (64, 1), "test": (64, 2), "predict": (32, 3)}

    def dataset(self, stage: str) -> Dataset:
        n, seed = self.splits[stage]
        return Sines(n, self.window, seed)


class NoSizes(ForecastData):
    """Forgot the sizes."""

    def dataset(self, stage):
        return Sines(8, 5, 0)


class WrongShape(SineDataModule):
    n_features = 3  # but the data has 2 channels
