"""data.shard_by_rank under a 2-process gloo group: each rank loads only its tickers, and the
statistics equal one process's (processes forked from pytest, as in tests/test_ddp.py)."""

import multiprocessing as mp
import traceback

import numpy as np
import pytest
import torch
import torch.distributed as dist

from forecasting.data.datamodule import PriceDataModule
from forecasting.data.sharding import LocalSampler, split
from tests.conftest import dm_kwargs, make_prices


def worker(rank: int, init: str, kwargs: dict, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        dm = PriceDataModule(**kwargs, shard_by_rank=True)
        dm.setup("fit")
        frame = dm.frames["fit"]
        sampler = dm.train_sampler(dm.dataset("train"))
        result = {
            "stats": dm.stats, "sharded": dm.sharded, "tickers": sorted(set(frame["ticker"])), "rows": len(frame),
            "train": len(dm.dataset("train")), "epoch": len(sampler),
            "val": len(dm.eval_sampler(dm.dataset("val"), {})),
        }  # fmt: skip
    except Exception as err:  # noqa: BLE001  (the parent asserts on it)
        result = {"error": str(err), "trace": traceback.format_exc()}
    finally:
        dist.destroy_process_group()
    torch.save(result, out)


def run_two(tmp_path, kwargs) -> list[dict]:
    ctx = mp.get_context("fork")
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=worker, args=(r, init, kwargs, str(tmp_path / f"rank{r}.pt"))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def assert_stats_equal(a: dict, b: dict) -> None:
    assert a["tickers"] == b["tickers"]
    assert [a["ranges"][k] for k in ("scaler", "baselines")] == [b["ranges"][k] for k in ("scaler", "baselines")]
    assert (a["val_start"], a["test_start"]) == (b["val_start"], b["test_start"])
    for key in ("center", "scale", "target_center", "target_scale"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(a["baselines"]["target_mean"], b["baselines"]["target_mean"], rtol=1e-6)
    if b["baselines"]["har_beta"] is not None:
        np.testing.assert_allclose(a["baselines"]["har_beta"], b["baselines"]["har_beta"], rtol=1e-6)


TICKERS = ("AAA", "BBB", "CCC", "DDD", "EEE")
CASES = {"one scaler": {}, "per ticker, robust": dict(scale_per_ticker=True, scaler="robust", horizon=2)}


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_each_rank_loads_its_tickers_and_the_scaler_equals_one_process(tmp_path, overrides):
    frame = make_prices(200, TICKERS, seed=5)
    frame = frame[~((frame.ticker == "EEE") & (frame.index % 200 < 40))]  # tickers of unequal length
    frame.to_parquet(tmp_path / "p.parquet")
    kwargs = dm_kwargs(tmp_path / "p.parquet", **overrides)
    one = PriceDataModule(**kwargs)
    one.setup("fit")
    ranks = run_two(tmp_path, kwargs)
    assert all("error" not in r for r in ranks), [r.get("trace") for r in ranks]
    assert all(r["sharded"] for r in ranks)
    assert ranks[0]["tickers"] == ["AAA", "BBB"] and ranks[1]["tickers"] == ["CCC", "DDD", "EEE"]  # ~equal rows
    assert sum(r["rows"] for r in ranks) == len(one.frames["fit"])
    for r in ranks:
        assert_stats_equal(r["stats"], one.stats)
    # Every window once: the shares' windows add up to one process's; epochs are equally long.
    for stage in ("train", "val"):
        assert sum(r[stage] for r in ranks) == len(one.dataset(stage))
    assert ranks[0]["epoch"] == ranks[1]["epoch"] == max(r["train"] for r in ranks)


def test_fewer_tickers_than_ranks_loads_everything_everywhere(tmp_path):
    make_prices(200, ("AAA",)).to_csv(tmp_path / "one.csv", index=False)
    kwargs = dm_kwargs(tmp_path / "one.csv")
    one = PriceDataModule(**kwargs)
    one.setup("fit")
    ranks = run_two(tmp_path, kwargs)
    assert not any(r["sharded"] for r in ranks) and all(r["rows"] == 200 for r in ranks)
    for r in ranks:
        assert {k: v for k, v in r["stats"].items() if k != "ranges"} == {
            k: v for k, v in one.stats.items() if k != "ranges"
        }


def test_a_bad_row_on_one_rank_stops_both_with_its_message(tmp_path):
    frame = make_prices(200, ("AAA", "BBB"))
    frame.loc[250, "volume"] = 0.0  # BBB: rank 1's share
    frame.to_parquet(tmp_path / "p.parquet")
    ranks = run_two(tmp_path, dm_kwargs(tmp_path / "p.parquet"))
    assert [r.get("error", "")[-60:] for r in ranks][0] == [r.get("error", "")[-60:] for r in ranks][1]
    assert all("row 251, column 'volume'" in r["error"] for r in ranks)


def test_shares_and_local_sampler():
    assert split(["b", "a", "c"], [1, 1, 1], 4) is None
    assert split(["b", "a", "c", "d"], [10, 1, 1, 1], 2) == [["a", "b"], ["c", "d"]]
    assert split(["a", "b", "c"], [100, 1, 1], 3) == [["a"], ["b"], ["c"]]  # at least one each
    sampler = LocalSampler(range(3), length=7, shuffle=True, seed=1)
    drawn = list(sampler)
    assert len(drawn) == 7 and set(drawn) == {0, 1, 2}
    sampler.set_epoch(1)
    assert list(sampler) != drawn or len(set(map(tuple, [drawn]))) == 1


@pytest.mark.slow
def test_cli_fit_under_ddp_with_shards(tmp_path):
    """A whole fit with Lightning's DDP (2 CPU processes): shards, equal step counts, one run."""
    from tests.test_ddp import cli

    make_prices(200, ("AAA", "BBB", "CCC")).to_csv(tmp_path / "prices.csv", index=False)
    cli(tmp_path, "fit", "--data.init_args.shard_by_rank", "true")
    (run,) = (tmp_path / "logs" / "volatility").iterdir()
    assert (run / "config.yaml").is_file() and list((run / "checkpoints").glob("*.ckpt"))
    assert len(list((tmp_path / "logs" / "data_cache").glob("prices-*.parquet"))) == 1  # parsed once, by rank 0
