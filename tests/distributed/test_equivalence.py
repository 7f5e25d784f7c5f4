"""TP/PP/VPP/DP/SP layouts of the same tiny Llama train to the same numbers as one process."""
from __future__ import annotations

import pytest
import torch

from tests.model_utils import TINY_OVERRIDES
from tests.spawn import run_distributed

STEPS = 3


def _train(overrides: list, steps: int):
    import os

    from elama.config import load_config, validate
    from elama.data.synthetic import synthetic_microbatches
    from elama.optim import build_optimizer
    from elama.parallel import parallelize_llama, setup
    from elama.parallel.dims import ParallelDims
    from elama.parallel.shards import apply_full_state_dict, gather_full_state_dict
    from elama.trainer import train_step
    from tests.model_utils import reference_init

    world = int(os.environ["WORLD_SIZE"])
    cfg = load_config(TINY_OVERRIDES + overrides)
    validate(cfg, world)
    dims = ParallelDims.from_config(cfg.parallel, world)
    setup.init_distributed(dims, device="cpu", seed=cfg.seed)
    model, tc = parallelize_llama(cfg, dims)
    apply_full_state_dict(model, reference_init(model, dims.tp))
    optimizer = build_optimizer(cfg, model)
    tc.grad_scale_func = optimizer.scale_loss
    iters = [synthetic_microbatches(seed=7, seq_len_tokens=cfg.data.seq_len_tokens,
                                    vocab_size=cfg.model.vocab_size,
                                    micro_batch_size=cfg.train.micro_batch_size,
                                    dp_rank=setup.dp_rank(), dp=dims.dp) for _ in model]
    init = gather_full_state_dict(model)
    history = []
    for _ in range(steps):
        r = train_step(model, optimizer, iters,
                       num_microbatches=dims.num_microbatches(cfg.train.global_batch_size,
                                                              cfg.train.micro_batch_size),
                       seq_len_tokens=cfg.data.seq_len_tokens,
                       micro_batch_size=cfg.train.micro_batch_size, clip_grad=cfg.optim.clip_grad)
        history.append((r.loss, r.grad_norm))
    final = gather_full_state_dict(model)
    moved = min(float((final[k] - init[k]).norm() / init[k].norm()) for k in final)
    return {"history": history, "params": final, "dp_rank": setup.dp_rank(), "moved": moved}


def run_layout(world: int, overrides: list):
    return run_distributed(_train, world, overrides, STEPS)


@pytest.fixture(scope="module")
def reference():
    return run_layout(1, [])[0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


LAYOUTS = {
    "tp2": (2, ["parallel.tp=2"]),
    "pp2": (2, ["parallel.pp=2"]),
    "dp2": (2, []),
    "tp2_pp2": (4, ["parallel.tp=2", "parallel.pp=2"]),
    "pp2_dp2_vpp2": (4, ["parallel.pp=2", "parallel.vpp=2"]),
    "tp2_dp2_sp_distopt": (4, ["parallel.tp=2", "parallel.sequence_parallel=true",
                               "parallel.distributed_optimizer=true"]),
}


@pytest.mark.distributed
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(layout, reference):
    world, overrides = LAYOUTS[layout]
    ranks = run_layout(world, overrides)
    ref_params = reference["params"]
    for rank, out in enumerate(ranks):
        # loss and grad norm of every step, seen identically on every rank
        for step, (got, want) in enumerate(zip(out["history"], reference["history"])):
            assert got[0] == pytest.approx(want[0], rel=1e-5), f"rank {rank} step {step} loss"
            assert got[1] == pytest.approx(want[1], rel=1e-5), f"rank {rank} step {step} grad norm"
        assert set(out["params"]) == set(ref_params), f"rank {rank} parameter names"
        worst = max(ref_params, key=lambda k: _rel(out["params"][k], ref_params[k]))
        assert _rel(out["params"][worst], ref_params[worst]) < 1e-5, f"rank {rank}: {worst}"
    # data-parallel replicas hold bitwise-identical parameters
    for out in ranks[1:]:
        if out["dp_rank"] != ranks[0]["dp_rank"]:
            for name, value in out["params"].items():
                assert torch.equal(value, ranks[0]["params"][name]), name
    # the comparison has teeth: every tensor moved far more than the tolerance
    assert reference["moved"] > 1e-4
