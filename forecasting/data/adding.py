"""The adding problem (Hochreiter & Schmidhuber 1997): a task with a known answer.

Each sequence of length T has two channels: values uniform on [0, 1], and a marker
that is 1 at exactly two positions (one in each half). The target is the sum of the
two marked values. Forecasting the constant 1 scores MSE 1/6 (about 0.167); a model
that learned to carry the first marked value across T steps scores below 0.01.
Generated in memory from a seed, no file. If the template cannot learn this, the
problem is the training setup, not the data.

Example: python -m forecasting fit --config configs/adding.yaml
"""

import torch
from torch.utils.data import Dataset, RandomSampler

from forecasting.data.base import ForecastData
from forecasting.errors import ForecastingError


def adding_problem(n: int, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (n, seq_len, 2) values and markers; y: (n, 1) the sum of the two marked values."""
    values = torch.rand(n, seq_len, generator=generator)
    half = seq_len // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, seq_len, (n,), generator=generator)
    marker = torch.zeros(n, seq_len)
    rows = torch.arange(n)
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    return torch.stack([values, marker], dim=2), (values * marker).sum(1, keepdim=True)


class AddingDataset(Dataset):
    """Batches shaped like the price windows' (x, y, y_loc, y_scale, row, baselines)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitems__(self, indices) -> dict:
        index = torch.as_tensor(indices, dtype=torch.long)
        ones = torch.ones(len(index), 1)
        return {
            "x": self.x[index],
            "y": self.y[index],
            "y_loc": torch.zeros_like(ones),  # targets are not scaled
            "y_scale": ones,
            "row": index,
            "baselines": {"mean": ones},  # the constant 1: MSE 1/6, the floor to beat
        }


class AddingDataModule(ForecastData):
    def __init__(
        self,
        seq_len: int = 50,
        n_train: int = 10_000,
        n_val: int = 1_000,
        n_test: int = 1_000,
        batch_size: int = 64,
        seed: int = 0,
        dense_targets: bool = False,  # linked by the CLI; this task has one target per sequence
    ):
        super().__init__()
        if seq_len < 2:
            raise ForecastingError(f"data.seq_len: must be at least 2, got {seq_len}")
        if dense_targets:
            raise ForecastingError(
                "the adding problem has one target per sequence: "
                "set model.tbptt_steps: null and model.dense_loss: false"
            )
        self.save_hyperparameters()
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.dense_targets = dense_targets
        self.datasets: dict[str, AddingDataset] = {}

    # Sizes the CLI links into the model.
    n_features, horizon, target_kind, target = 2, 1, "other", "sum_of_marked"

    def setup(self, stage: str) -> None:
        if self.datasets:
            return
        generator = torch.Generator().manual_seed(self.seed)
        for split, n in self.sizes.items():  # each split its own draws: no sequence is shared
            self.datasets[split] = AddingDataset(*adding_problem(n, self.seq_len, generator))
        self.datasets["predict"] = self.datasets["test"]

    def dataset(self, stage: str) -> AddingDataset:
        if not self.datasets:
            self.setup(stage)
        return self.datasets[stage]

    def train_sampler(self, dataset):
        return RandomSampler(dataset)  # the order every measurement in the README was made with
