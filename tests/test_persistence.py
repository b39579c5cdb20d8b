"""Catch the model that only copies or only outputs a flat line; prove the data module does not leak."""

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from forecasting import persistence
from forecasting.data.datamodule import PriceDataModule
from forecasting.errors import ForecastingError
from forecasting.models.forecaster import Forecaster
from tests.conftest import dm_kwargs


def ar2(n=3000, phi=(0.2, -0.7), seed=0):
    rng = np.random.default_rng(seed)
    a = np.zeros(n)
    for t in range(2, n):
        a[t] = phi[0] * a[t - 1] + phi[1] * a[t - 2] + rng.standard_normal()
    return a


def test_a_copy_of_the_last_value_is_flagged_and_a_learned_ar2_forecast_is_not():
    a = ar2()
    rows = np.arange(2, len(a) - 1)  # the window ending at row t forecasts a[t + 1]
    actual = a[rows + 1]
    copy = a[rows]  # "same as yesterday"
    learned = 0.2 * a[rows] - 0.7 * a[rows - 1]  # the true conditional mean of an AR(2)
    lag, corr = persistence.best_lag(rows, copy, actual)
    assert lag == 1 and corr > 0.95 and persistence.corr_with_last_input(copy, a[rows]) > 0.95
    lag, corr = persistence.best_lag(rows, learned, actual)
    assert lag == 0 and corr > 0.5 and persistence.corr_with_last_input(learned, a[rows]) < 0.5


class LastInput(nn.Module):
    """Returns the last input value of feature `index` at every step: a pure copier."""

    def __init__(self, index: int, flat: bool = False):
        super().__init__()
        self.index, self.flat, self.dummy = index, flat, nn.Parameter(torch.zeros(1))

    def forward(self, x, state=None):
        out = x[..., self.index : self.index + 1]
        return (out * 0 if self.flat else out) + self.dummy, state


@pytest.mark.parametrize("flat", [False, True])
def test_validation_logs_best_lag_corr_and_std_ratio(prices_csv, flat):
    dm = PriceDataModule(**dm_kwargs(prices_csv))  # features: log_return, gk_log_var, ...; target gk_log_var
    model = Forecaster(n_features=3, target_kind="log_variance")
    model.net = LastInput(index=1, flat=flat)  # the scaled gk_log_var input, in scaled target units
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(model, dm, verbose=False)[0]
    if flat:
        assert metrics["val/pred_std_ratio"] == pytest.approx(0.0, abs=1e-6)  # the flat-forecast alarm
    else:
        assert metrics["val/best_lag"] == 1 and metrics["val/best_lag_corr"] > 0.95
        assert metrics["val/corr_with_last_input"] == pytest.approx(1.0, abs=1e-5)
        assert metrics["val/pred_std_ratio"] > 0.5


def test_the_normal_path_records_ranges_that_end_before_validation(prices_csv, tmp_path):
    dm = PriceDataModule(**dm_kwargs(prices_csv))
    dm.setup("fit")
    for split in ("train", "val", "test"):
        dm.dataset(split)
    ranges, val = dm.stats["ranges"], dm.stats["val_start"]
    assert ranges["scaler"][1] < val and ranges["train_targets"][1] < val
    assert ranges["val_targets"][0] >= val and ranges["val_targets"][1] < dm.stats["test_start"]
    assert ranges["test_targets"][0] >= dm.stats["test_start"]
    assert dm.hparams["ranges"]["scaler"] == ranges["scaler"]
    torch.save(dm.state_dict(), tmp_path / "state.pt")  # the checkpoint carries them
    assert torch.load(tmp_path / "state.pt", weights_only=True)["ranges"] == ranges


class LeakyScaler(PriceDataModule):
    def scaler_rows(self, frame: pd.DataFrame, val: pd.Timestamp) -> pd.DataFrame:
        return frame  # every row: the scaler sees validation and test days


def test_a_scaler_fitted_on_all_rows_is_refused(prices_csv):
    with pytest.raises(ForecastingError, match="leakage: the scaler was fitted on rows up to 2021-02-23"):
        LeakyScaler(**dm_kwargs(prices_csv)).setup("fit")


def test_gate_norms_of_weight_hh_sum_in_squares_to_the_whole():
    from forecasting.callbacks.grad_norms import gate_norms
    from forecasting.models.lstm import StackedRNN

    net = StackedRNN(3, 1, hidden_sizes=8)
    out, _ = net(torch.randn(4, 10, 3))
    out.pow(2).mean().backward()
    grad = net.layers[0].weight_hh_l0.grad
    norms = gate_norms(grad)
    assert list(norms) == ["input", "forget", "cell", "output"]
    total = sum(n**2 for n in norms.values())
    assert torch.isclose(total, grad.norm() ** 2, rtol=1e-5)
    assert norms["forget"] == grad[8:16].norm()  # rows 8..15 are the forget gate's
