"""The suite's proof that training works at all: the default LSTM learns the adding problem."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from forecasting.data.adding import AddingDataModule, adding_problem
from forecasting.errors import ForecastingError
from forecasting.models.forecaster import Forecaster
from tests.nets import lstm


def test_adding_problem_data():
    x, y = adding_problem(1000, 30, torch.Generator().manual_seed(0))
    assert x.shape == (1000, 30, 2) and y.shape == (1000, 1)
    markers = x[:, :, 1]
    assert torch.all(markers.sum(1) == 2)
    assert torch.all(markers[:, :15].sum(1) == 1) and torch.all(markers[:, 15:].sum(1) == 1)
    torch.testing.assert_close(y[:, 0], (x[:, :, 0] * markers).sum(1))
    # the constant-1 forecast scores about 1/6: the baseline every batch carries
    assert ((y - 1) ** 2).mean().item() == pytest.approx(1 / 6, abs=0.02)


def test_adding_refuses_dense_targets():
    with pytest.raises(ForecastingError, match="model.tbptt_steps: null"):
        AddingDataModule(dense_targets=True)


class BestValLoss(L.Callback):
    def __init__(self):
        self.best = float("inf")

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.best = min(self.best, float(trainer.callback_metrics["val/loss"]))


@pytest.mark.slow
def test_default_lstm_learns_adding_t30():
    L.seed_everything(0, verbose=False)
    dm = AddingDataModule(seq_len=30, n_train=6400, n_val=500, batch_size=64)
    model = Forecaster(n_features=2, net=lstm(dropout=0.0), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    best = BestValLoss()  # Adam's loss curve on this task is bumpy: judge the best validation MSE
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=700, val_check_interval=50, deterministic=True, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[best], num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, dm)
    assert trainer.global_step == 700
    assert best.best < 0.02, f"stuck at {best.best:.3f} after {trainer.global_step} steps"
    metrics = trainer.callback_metrics
    assert metrics["val/baseline_mse_mean"] == pytest.approx(1 / 6, abs=0.03)
    assert metrics["val/skill_vs_mean"] > 0.8


def test_under_ddp_each_validation_sequence_goes_to_one_rank():
    dm = AddingDataModule(seq_len=10, n_train=64, n_val=45, n_test=45, batch_size=8)
    dm.setup("fit")
    seen = []
    for rank in range(2):
        ranks = {"num_replicas": 2, "rank": rank}
        dm.trainer = SimpleNamespace(
            strategy=SimpleNamespace(root_device=torch.device("cpu"), distributed_sampler_kwargs=ranks)
        )
        seen += [int(i) for batch in dm.val_dataloader() for i in batch["row"]]
    assert sorted(seen) == list(range(45))  # 45 windows over 2 ranks: none repeated, none left out
