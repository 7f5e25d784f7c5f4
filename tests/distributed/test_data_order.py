"""The data a run reads: one dataset and one loader per rank that needs data, feeding all its
virtual chunks (none on middle pipeline ranks), and a run extended within its token budget reads
exactly what the longer run from scratch reads; past the budget it is refused."""
from __future__ import annotations

import pytest

from elama import checkpoint
from tests.launch import metrics, train
from tests.spawn import run_distributed

pytestmark = pytest.mark.distributed


def _blend(blend) -> str:
    return (f"data.train_blend=[{{prefix:{blend['ecommerce']},weight:0.5}},"
            f"{{prefix:{blend['general']},weight:0.5}}]")


def _draw(blend: dict, run_dir: str, parallel: list, microbatches: int) -> dict:
    import os

    from elama.config import load_config
    from elama.data import loader
    from elama.parallel import setup
    from elama.parallel.dims import ParallelDims

    world = int(os.environ["WORLD_SIZE"])
    cfg = load_config(["model=tiny", "data.seq_len_tokens=32", _blend(blend),
                       "train.micro_batch_size=1", "train.global_batch_size=4",
                       "train.train_steps=5", f"checkpoint.run_dir={run_dir}", *parallel])
    dims = ParallelDims.from_config(cfg.parallel, world)
    setup.init_distributed(dims, device="cpu", seed=cfg.seed)
    iters, _ = loader.build_train_data(cfg, dims, consumed_samples=0)
    # the interleaved schedule's order: chunk 0 runs ahead of chunk 1 by a few microbatches
    drawn = [[] for _ in iters]
    for c, it in enumerate(iters):
        for _ in range(microbatches):
            drawn[c].append(next(it)["tokens"].tolist())
    return {"opens": dict(loader.OPENS), "pp_rank": setup.pp_rank(), "drawn": drawn}


def test_one_loader_per_rank_and_none_on_middle_stages(tiny_blend, tmp_path):
    vpp = run_distributed(_draw, 2, tiny_blend, str(tmp_path / "a"),
                          ["parallel.pp=2", "parallel.vpp=2"], 3)
    for rank in vpp:  # both ranks hold a first or last stage: one dataset, one loader, 2 chunks
        assert rank["opens"] == {"dataset": 1, "loader": 1}
        assert rank["drawn"][0] == rank["drawn"][1] and any(any(row) for row in rank["drawn"][0])
    assert vpp[0]["drawn"] == vpp[1]["drawn"]  # the same global batch order on every stage
    pp4 = run_distributed(_draw, 4, tiny_blend, str(tmp_path / "b"), ["parallel.pp=4"], 2)
    for rank in pp4:
        middle = rank["pp_rank"] in (1, 2)
        assert rank["opens"] == ({} if middle else {"dataset": 1, "loader": 1}), rank["pp_rank"]
        if middle:  # placeholders of the right shape, no data
            assert rank["drawn"][0] == [[[0] * 32]] * 2
    assert pp4[0]["drawn"] == pp4[3]["drawn"] == [vpp[0]["drawn"][0][:2]]


def _argv(run_dir, blend, *extra) -> list[str]:
    # a fixed decay horizon: the schedule does not depend on train_steps, only the data could
    return ["model=tiny", "model.precision=fp32", "data.seq_len_tokens=32", _blend(blend),
            "data.token_budget=3840", "optim.decay_steps=20", "train.micro_batch_size=2",
            "train.global_batch_size=4", "optim.lr=3e-3", "logging.tensorboard=false",
            f"checkpoint.run_dir={run_dir}", *extra]


def test_extending_a_run_keeps_the_data_order_and_refuses_past_the_budget(tiny_blend, tmp_path):
    straight, extended = tmp_path / "straight", tmp_path / "extended"
    assert train(1, _argv(straight, tiny_blend, "train.train_steps=15"), tmp_path / "l1") == [0]
    assert train(1, _argv(extended, tiny_blend, "train.train_steps=10"), tmp_path / "l2") == [0]
    assert train(1, _argv(extended, tiny_blend, "train.train_steps=15"), tmp_path / "l3") == [0]
    want, got = metrics(straight), metrics(extended)
    assert sorted(got) == list(range(1, 16))
    assert [got[s]["loss"] for s in range(11, 16)] == [want[s]["loss"] for s in range(11, 16)]
    # 3840 tokens / 32 = 120 sequences = 30 steps of 4: step 31 is past the plan
    assert train(1, _argv(extended, tiny_blend, "train.train_steps=31"), tmp_path / "l4") == [2]
    log = (tmp_path / "l4" / "rank0.log").read_text()
    assert "train.train_steps=31 needs 124 sequences" in log and "data.token_budget" in log
    assert "Traceback" not in log and checkpoint.read_tracker(extended) == 15
    # the budget itself may not change under a resumed run either
    assert train(1, _argv(extended, tiny_blend, "train.train_steps=16", "data.token_budget=4000"),
                 tmp_path / "l5") == [2]
    assert "the sample order would change" in (tmp_path / "l5" / "rank0.log").read_text()
