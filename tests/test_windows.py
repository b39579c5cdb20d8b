import torch

from forecasting.data.base import keep_batch
from forecasting.data.windows import WindowDataset, valid_ends, window_view


def base(rows=10, features=2):
    # row r holds (r, 100 + r): every value says where it came from
    r = torch.arange(rows, dtype=torch.float32)
    return torch.stack([r, 100 + r], dim=1)[:, :features].contiguous()


def test_window_view_values_and_zero_copy():
    x = base()
    view = window_view(x, 4)
    assert view.shape == (7, 4, 2)
    assert torch.equal(view[2], torch.tensor([[2.0, 102], [3, 103], [4, 104], [5, 105]]))
    assert view.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    x[5, 0] = -1.0  # a view, not a copy: the change shows through
    assert view[2, 3, 0] == -1.0


def test_valid_ends_never_cross_series_or_bad_rows():
    series = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    bad = torch.zeros(11, dtype=torch.bool)
    bad[8] = True
    ends = valid_ends(series, bad, 3)
    # series 0: rows 0-4 -> ends 2, 3, 4; series 1: rows 5-10 with row 8 bad -> only 5..7 is clean
    assert ends.tolist() == [2, 3, 4, 7]
    assert valid_ends(series, torch.zeros(11, dtype=torch.bool), 3).tolist() == [2, 3, 4, 7, 8, 9, 10]
    assert valid_ends(series, torch.zeros(11, dtype=torch.bool), 20).tolist() == []


def test_batch_is_one_gather_matching_per_sample_slices():
    x = base(12)
    y = torch.arange(12, dtype=torch.float32)[:, None] * 10  # target "after" row r
    loc, scale = torch.full((12,), 1.0), torch.full((12,), 2.0)
    ends = torch.tensor([3, 5, 11])
    ds = WindowDataset(x, y, loc, scale, ends, window=4)
    batch = keep_batch(ds.__getitems__([2, 0]))
    assert batch["x"].shape == (2, 4, 2)
    assert torch.equal(batch["x"][0], x[8:12]) and torch.equal(batch["x"][1], x[0:4])
    assert batch["y"].squeeze(1).tolist() == [110.0, 30.0]
    assert batch["row"].tolist() == [11, 3]
    assert batch["y_scale"].shape == (2, 1)
    dense = WindowDataset(x, y, loc, scale, ends, window=4, dense=True)
    assert dense.__getitems__([1])["y"].squeeze(-1).tolist() == [[20.0, 30.0, 40.0, 50.0]]
    assert len(ds) == 3 and torch.equal(ds[1]["x"], x[2:6])
