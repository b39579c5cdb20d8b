import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from forecasting.errors import ForecastingError
from forecasting.models.forecaster import Forecaster
from forecasting.models.lstm import StackedRNN
from tests.nets import lstm


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_output_at_every_step_and_state_round_trip(cell):
    net = StackedRNN(n_features=3, n_outputs=2, hidden_sizes=8, num_layers=2, cell=cell)
    x = torch.randn(5, 12, 3)
    out, state = net(x)
    assert out.shape == (5, 12, 2)
    # feeding the state back: two halves give the same outputs as the whole (what truncated BPTT relies on)
    net.eval()
    whole, _ = net(x)
    first, mid = net(x[:, :6])
    second, _ = net(x[:, 6:], mid)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


def test_orthogonal_init_and_forget_bias():
    net = StackedRNN(n_features=3, n_outputs=1, hidden_sizes=[16, 8], init="orthogonal", forget_bias=1.0)
    for rnn, h in zip(net.layers, [16, 8], strict=True):
        for block in rnn.weight_hh_l0.detach().split(h):  # one square block per gate
            torch.testing.assert_close(block @ block.T, torch.eye(h), atol=1e-5, rtol=0)
        b_ih = rnn.bias_ih_l0.detach()
        assert torch.all(b_ih[h : 2 * h] == 1.0) and torch.all(b_ih[:h] == 0) and torch.all(b_ih[2 * h :] == 0)
        assert torch.all(rnn.bias_hh_l0 == 0)
    default = StackedRNN(n_features=3, n_outputs=1, hidden_sizes=16, init="pytorch")
    block = default.layers[0].weight_hh_l0.detach()[:16]
    assert (block @ block.T - torch.eye(16)).abs().max() > 0.5  # PyTorch's uniform init is not orthogonal


def test_overfits_one_small_batch():
    torch.manual_seed(0)
    model = Forecaster(n_features=3, horizon=1, net=lstm(hidden_sizes=32, dropout=0.0))
    x, y = torch.randn(16, 20, 3), torch.randn(16, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 10


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"net": lstm(dropout=1.5)}, "model.net.init_args.dropout"),
        ({"net": lstm(cell="transformer")}, "model.net.init_args.cell"),
        ({"net": lstm(init="he")}, "model.net.init_args.init"),
        ({"loss": "mape"}, "model.loss"),
        ({"net": lstm(hidden_sizes=0)}, "model.net.init_args.hidden_sizes"),
        ({"net": lstm(hidden_sizes=[64, -1])}, "model.net.init_args.hidden_sizes"),
    ],
)
def test_bad_model_config_names_the_key(kwargs, key):
    with pytest.raises(ForecastingError, match=key):
        Forecaster(**kwargs)


class BatchLosses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


@pytest.mark.parametrize("tbptt_steps", [None, 3], ids=["full_bptt", "tbptt"])
def test_train_loss_is_logged_as_interval_and_epoch_means(tmp_path, tbptt_steps):
    # 7 batches of 5 windows and one of 3 per epoch; Lightning writes batches 3, 6, 9, ... (every 3).
    # Truncated BPTT: 2 optimiser steps per batch (window 6, chunks of 3), still written per batch.
    torch.manual_seed(0)
    data = [{"x": torch.randn(n, 6, 3), "y": torch.randn(n, 6, 1)} for n in [5] * 7 + [3]]
    net = Forecaster(n_features=3, net=lstm(hidden_sizes=8, dropout=0.0), dense_loss=True, burn_in=0, tbptt_steps=tbptt_steps)
    seen = BatchLosses()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2, log_every_n_steps=3, logger=CSVLogger(tmp_path), callbacks=[seen], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(net, DataLoader(data, batch_size=None))
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    logged = {int(r["step"]): float(r["train/loss_step"]) for r in rows if r["train/loss_step"]}
    epochs = [float(r["train/loss_epoch"]) for r in rows if r["train/loss_epoch"]]
    sizes = [len(b["y"]) for b in data] * 2
    assert sorted(logged) == [2, 5, 8, 11, 14]  # Lightning's step index: after 3, 6, 9, 12, 15 batches

    def mean(first, last):  # window-weighted mean of batches first..last (0-based, inclusive)
        pairs = list(zip(seen.losses[first : last + 1], sizes[first : last + 1], strict=True))
        return sum(loss * n for loss, n in pairs) / sum(n for _, n in pairs)

    # each written value is the mean since the previously logged batch (the epoch's last batch logs too)
    expected = {2: mean(0, 2), 5: mean(3, 5), 8: mean(8, 8), 11: mean(9, 11), 14: mean(12, 14)}
    for step, value in expected.items():
        assert logged[step] == pytest.approx(value, rel=1e-5)
    assert epochs == pytest.approx([mean(0, 7), mean(8, 15)], rel=1e-5)
