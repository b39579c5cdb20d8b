"""The suite's proof that training works at all: the default LSTM learns the adding problem."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from forecasting.data.adding import AddingDataModule, adding_problem
from forecasting.errors import ForecastingError
from forecasting.models.forecaster import Forecaster


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


@pytest.mark.slow
def test_default_lstm_learns_adding_t30():
    L.seed_everything(0, verbose=False)
    dm = AddingDataModule(seq_len=30, n_train=6400, n_val=500, batch_size=64)
    model = Forecaster(n_features=2, dropout=0.0, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    stop = EarlyStopping("val/loss", patience=100, stopping_threshold=0.015, check_on_train_epoch_end=False)
    trainer = L.Trainer(
        max_steps=800, val_check_interval=100, deterministic=True, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[stop],
    )  # fmt: skip
    trainer.fit(model, dm)
    metrics = trainer.callback_metrics
    best = float(stop.best_score)  # the best validation MSE seen (Adam's loss curve is bumpy)
    assert best < 0.02, f"stuck at {best:.3f} after {trainer.global_step} steps"
    assert metrics["val/baseline_mse_mean"] == pytest.approx(1 / 6, abs=0.03)
    assert metrics["val/skill_vs_mean"] > 0.85
