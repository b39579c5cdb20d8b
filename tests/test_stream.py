"""Stream mode (data.mode: stream): the layout, exactness against full BPTT, truncation at chunk
boundaries, forecasts equal to one call over the whole history, resume mid-epoch, errors."""

import copy
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from forecasting.data.datamodule import PriceDataModule
from forecasting.errors import ForecastingError
from forecasting.models.forecaster import Forecaster
from tests.conftest import dm_kwargs
from tests.nets import lstm


def stream_dm(path, k, **kw) -> PriceDataModule:
    dm = PriceDataModule(**dm_kwargs(path, mode="stream", tbptt_steps=k, **kw))
    dm.setup("fit")
    return dm


def model(**kwargs) -> Forecaster:
    torch.manual_seed(0)
    defaults = dict(n_features=3, net=lstm(hidden_sizes=8, dropout=0.0), burn_in=4, gradient_clip_val=1.0)
    defaults["optimizer"] = lambda p: torch.optim.Adam(p, lr=0.01)
    return Forecaster(**{**defaults, **kwargs})


def fit(module, batches, **kw) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, **{"max_epochs": 1, **kw},
    )  # fmt: skip
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return trainer


def test_layout_covers_every_training_row_once_in_contiguous_lanes(prices_csv):
    k = 8
    ds = stream_dm(prices_csv, k, batch_size=5).dataset("train")
    assert len(ds.pieces) == 2 and ds.lanes == 5  # one piece per ticker, dealt to 5 lanes
    steps = {len(ds)}
    for epoch in range(3):
        ds.set_epoch(epoch)
        steps.add(len(ds))
        seen = []
        for lane in range(ds.lanes):
            prev = None
            for s in range(ds.steps):
                n, start, pos0 = int(ds.length[lane, s]), int(ds.start[lane, s]), int(ds.pos0[lane, s])
                if n == 0:
                    continue
                seen += list(range(start, start + n))
                # within a lane a stream continues exactly where the previous chunk ended
                if prev is not None and pos0 > 0:
                    assert start == prev and pos0 % k == 0
                prev = start + n
        for start, n in ds.pieces:  # every row once, but for the 0..k-1 shifted off at the start
            mine = sorted(r for r in seen if start <= r < start + n)
            assert mine == list(range(mine[0], start + n)) and mine[0] - start < k
        assert len(seen) == len(set(seen))
    assert steps == {ds.steps}  # the same number of batches every epoch
    shifts = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        shifts.append(int(ds.start[0, 0]) - ds.pieces[0][0])
    assert len(set(shifts)) > 1  # the chunk boundaries move from epoch to epoch


def test_batches_carry_positions_and_resets(prices_csv):
    ds = stream_dm(prices_csv, 8, batch_size=4).dataset("train")
    b0, b1 = ds[0], ds[1]
    assert b0["x"].shape == (4, 8, 3) and b0["y"].shape == (4, 8, 1)
    assert b0["reset"].all() and torch.equal(b0["pos"][:, 0], torch.zeros(4, dtype=torch.long))
    assert not b1["reset"].any() and torch.equal(b1["pos"], b0["pos"] + 8)
    assert not torch.isnan(b0["x"]).any() and not torch.isnan(b1["y"]).any()


def test_val_and_test_score_the_same_rows_as_windowed_mode(prices_csv):
    streams = stream_dm(prices_csv, 8)
    windows = PriceDataModule(**dm_kwargs(prices_csv))
    windows.setup("fit")
    for stage in ("val", "test"):
        s, w = streams.dataset(stage), windows.dataset(stage)
        assert torch.equal(s.ends, w.ends)
        batch = s.__getitems__(range(len(s)))
        assert torch.equal(batch["row"], w.ends) and batch["x"].shape[0] == 2  # one series per ticker
        ref = w.__getitems__(range(len(w)))
        torch.testing.assert_close(batch["y"], ref["y"])
        torch.testing.assert_close(batch["baselines"]["har"], ref["baselines"]["har"])


def one_stream_per_ticker(prices_csv):
    """A k covering each ticker's whole training span: one batch, one lane per ticker."""
    pieces = stream_dm(prices_csv, 8).dataset("train").pieces
    n = pieces[0][1]
    assert [p[1] for p in pieces] == [n, n]
    ds = stream_dm(prices_csv, n, batch_size=2).dataset("train")
    assert len(ds) == 1 and ds.lanes == 2
    return ds[0], n


def test_one_stream_per_ticker_equals_full_bptt_after_one_step(prices_csv):
    batch, n = one_stream_per_ticker(prices_csv)
    assert torch.equal(batch["pos"], torch.arange(n).expand(2, n))
    full, stream = model(dense_loss=True), model(tbptt_steps=n)
    before = copy.deepcopy(full.state_dict())
    windowed = {k: batch[k] for k in ("x", "y", "y_loc", "y_scale", "row")}  # the series as two windows
    fit(full, [windowed], max_steps=1)
    fit(stream, [batch], max_steps=1)
    for name, value in full.state_dict().items():
        torch.testing.assert_close(stream.state_dict()[name], value, atol=1e-6, rtol=0)
    assert not torch.equal(before["net.layers.0.weight_hh_l0"], full.state_dict()["net.layers.0.weight_hh_l0"])


def test_no_gradient_crosses_a_chunk_boundary_but_the_state_does(prices_csv):
    ds = stream_dm(prices_csv, 16, batch_size=2).dataset("train")
    b0, b1 = ds[0], ds[1]
    assert not b1["reset"].any()
    m = model(tbptt_steps=16, burn_in=0)
    x0 = b0["x"].clone().requires_grad_(True)
    m.stream_loss({**b0, "x": x0})
    carried = m._carry
    loss1, _ = m.stream_loss(b1)
    assert torch.autograd.grad(loss1, x0, allow_unused=True)[0] is None  # exactly nothing reaches chunk 0
    # ... yet chunk 0 shaped chunk 1's forecasts: they differ from a cold start, and equal the
    # network run over both chunks in one call
    cold, _ = m.net(b1["x"])
    warm, _ = m.net(b1["x"], carried)
    whole, _ = m.net(torch.cat([b0["x"], b1["x"]], 1))
    torch.testing.assert_close(warm, whole[:, 16:], atol=1e-6, rtol=0)
    assert (warm - cold).abs().max() > 1e-3
    torch.testing.assert_close(loss1, m.loss_fn(whole[:, 16:], b1["y"]), atol=1e-6, rtol=0)


def test_stream_forecasts_equal_one_call_over_the_history_and_a_whole_history_window(prices_csv):
    dm = stream_dm(prices_csv, 8)
    m = model(tbptt_steps=8).eval()
    val = dm.dataset("val")
    batch = val.__getitems__(range(len(val)))
    with torch.no_grad():
        pred = m.head.point(m.forecasts(batch)[1])  # the forecasts (B, H) from the head's parameters
        x, scaler = dm._tensors["fit"][0], dm._tensors["fit"][-1]
        x = scaler(x, torch.arange(len(x)))  # the rows as the model reads them
        start = val.starts[0]
        for i in (0, 5, len(val.scored[0]) - 1):  # day t of the first ticker: one call over days 1..t
            row = int(val.scored[0][i])
            one_call, _ = m.net(x[None, start : row + 1])
            torch.testing.assert_close(pred[i], one_call[0, -1], atol=1e-5, rtol=0)
        # the windowed forecast, with the window covering that whole history, is the same number
        row = int(val.scored[0][3])
        windows = PriceDataModule(**dm_kwargs(prices_csv, window=row - start + 1))
        windows.setup("fit")
        w = windows.dataset("val")
        j = int(torch.nonzero(w.ends == row)[0])
        torch.testing.assert_close(m(w[j]["x"][None])[0], pred[3], atol=1e-5, rtol=0)


def test_resume_mid_epoch_continues_exactly(prices_csv, tmp_path):
    def trainer(**kw):
        return L.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            limit_val_batches=0, max_epochs=2, deterministic=True, **kw,
        )  # fmt: skip

    dm = stream_dm(prices_csv, 8, batch_size=3)
    steps = len(dm.dataset("train"))
    assert steps >= 4
    L.seed_everything(0)
    straight = model(tbptt_steps=8)
    first = trainer(enable_checkpointing=False)
    first.fit(straight, stream_dm(prices_csv, 8, batch_size=3))
    assert float(first.callback_metrics["train/loss_epoch"]) > 0  # logged as in the other modes

    L.seed_everything(0)
    save = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=steps + 2, save_top_k=-1)
    trainer(callbacks=[save], max_steps=steps + 2).fit(model(tbptt_steps=8), stream_dm(prices_csv, 8, batch_size=3))
    (ckpt,) = tmp_path.glob("*.ckpt")
    saved = torch.load(ckpt, weights_only=True)
    epoch, done = saved["PriceDataModule"]["stream_position"]  # (a batch all in burn-in makes no step)
    assert epoch == 1 and 0 < done < steps and "stream_state" in saved
    resumed = model(tbptt_steps=8)
    trainer(enable_checkpointing=False).fit(resumed, stream_dm(prices_csv, 8, batch_size=3), ckpt_path=ckpt)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(mode="streams"), ["data.mode", "'streams'", "'stream'"]),
        (dict(mode="stream"), ["data.mode: stream", "model.tbptt_steps"]),
        (dict(mode="stream", tbptt_steps=8, shard_by_rank=True), ["data.shard_by_rank", "data.mode: stream"]),
    ],
)
def test_bad_mode_is_one_line(prices_csv, kw, words):
    with pytest.raises(ForecastingError) as err:
        PriceDataModule(**dm_kwargs(prices_csv, **kw))
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


class LanesSeen(Callback):
    """Each rank writes, per batch, the last row of each of its lanes, its state's lane count and
    its final weights to <out>/stream_rank<r>.json."""

    def __init__(self, out):
        self.out, self.rows, self.lanes = out, [], set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows.append(batch["row"].tolist())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lanes.add(int(pl_module._carry[0][0].shape[1]))  # StackedRNN: [(h, c) per layer], (1, B, H)

    def on_train_epoch_end(self, trainer, pl_module):
        weight = float(pl_module.net.layers[0].weight_hh_l0.sum())
        record = {"rows": self.rows, "lanes": sorted(self.lanes), "steps": trainer.global_step, "weight": weight}
        (self.out / f"stream_rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.fixture
def one_thread():
    """One torch thread per DDP rank (see tests/test_ddp.py: two spin-waiting OpenMP threads per rank
    on a busy 2-core machine made a 0.2 s fit take 12 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ddp_shards_lanes_and_keeps_state_per_rank(prices_csv, tmp_path, one_thread):
    from tests.test_ddp import fork
    from tests.test_ddp import trainer as ddp_trainer

    L.seed_everything(7)  # the layout's seed (PL_GLOBAL_SEED), in every rank
    dm = stream_dm(prices_csv, 8, batch_size=4)
    layout = dm.dataset("train")
    expected = [sorted(layout.batch(s)["row"].tolist()) for s in range(len(layout))]
    m = model(tbptt_steps=8)
    ddp = ddp_trainer(devices=2, strategy=fork(), callbacks=[LanesSeen(tmp_path)])
    ddp.fit(m, datamodule=stream_dm(prices_csv, 8, batch_size=4))
    ranks = [json.loads((tmp_path / f"stream_rank{r}.json").read_text()) for r in range(2)]
    assert [r["lanes"] for r in ranks] == [[2], [2]]  # each rank carries the state of its own 2 lanes
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0 and len(ranks[0]["rows"]) == len(expected)
    for step, want in enumerate(expected):  # together the ranks hold exactly the one-process lanes
        assert sorted(ranks[0]["rows"][step] + ranks[1]["rows"][step]) == want
        assert not set(ranks[0]["rows"][step]) & set(ranks[1]["rows"][step]) - {-1}
    assert ranks[0]["weight"] == pytest.approx(ranks[1]["weight"], abs=1e-6)  # gradients synced
    # validation: each series on one rank, the loss reduced over both = one process's
    val = float(ddp.callback_metrics["val/loss"])
    one = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (result,) = one.validate(m, datamodule=stream_dm(prices_csv, 8, batch_size=4), verbose=False)
    assert result["val/loss"] == pytest.approx(val, rel=1e-5)


def test_state_batch_dims_of_a_users_network():
    """A reset zeroes exactly the marked lanes whatever the nesting (tests/nets.py's SeedLSTM: a list)."""
    from forecasting.models import state as lanes
    from tests.nets import SeedLSTM

    net = SeedLSTM(3, 1)
    dims = lanes.batch_dims(net, 3)
    assert dims == [1, 1, 1, 1]  # (h, c) of two nn.LSTM layers: (layers, batch, hidden)
    _, carried = net(torch.randn(4, 5, 3))
    kept = lanes.keep_lanes(carried, torch.tensor([True, False, True, False]), dims)
    for before, after in zip(lanes.leaves(carried), lanes.leaves(kept), strict=True):
        assert torch.equal(after[:, [0, 2]], before[:, [0, 2]]) and not after[:, [1, 3]].any()
