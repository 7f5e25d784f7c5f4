"""TP/PP/VPP/DP/SP layouts of the same tiny Llama train to the same numbers as one process, with
Llama 3's real 128256-token vocabulary (the embedding and output layer dominate the grad norm, the
case where a float32 norm drifts by layout: the CPU layer's float64 norm holds it to 1e-6)."""
from __future__ import annotations

import pytest
import torch

from tests.spawn import run_distributed

STEPS = 3
VOCAB = ["model.vocab_size=128256"]


def _train(overrides: list, steps: int):
    from elama.data.synthetic import synthetic_microbatches
    from elama.parallel import setup
    from elama.parallel.shards import gather_full_state_dict
    from elama.trainer import train_step
    from tests.model_utils import build_reference_run

    cfg, dims, model, optimizer = build_reference_run(VOCAB + overrides)
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
    from elama.parallel import cpu

    exact_norms = sum(n for (_, fn, kind), n in cpu.HITS.items() if kind == "exact_norm")
    return {"history": history, "params": final, "dp_rank": setup.dp_rank(), "moved": moved,
            "exact_norms": exact_norms}


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
            assert got[1] == pytest.approx(want[1], rel=1e-6), f"rank {rank} step {step} grad norm"
        assert set(out["params"]) == set(ref_params), f"rank {rank} parameter names"
        worst = max(ref_params, key=lambda k: _rel(out["params"][k], ref_params[k]))
        assert _rel(out["params"][worst], ref_params[worst]) < 1e-5, f"rank {rank}: {worst}"
    # data-parallel replicas hold bitwise-identical parameters
    for out in ranks[1:]:
        if out["dp_rank"] != ranks[0]["dp_rank"]:
            for name, value in out["params"].items():
                assert torch.equal(value, ranks[0]["params"][name]), name
    # the comparison has teeth: every tensor moved far more than the tolerance, and the norm
    # clipped (clip_grad=1) was the CPU layer's exact one, once per step on every rank
    assert reference["moved"] > 1e-4
    assert all(h[1] > 1.0 for h in reference["history"]), reference["history"]
    assert reference["exact_norms"] == STEPS and all(o["exact_norms"] == STEPS for o in ranks)


# ---- the pieces on one process: exact norm, in-place clip, fused AdamW ----------------------
def test_cpu_layer_norm_is_exact_where_megatrons_fallback_drifts():
    from megatron.core.utils import local_multi_tensor_l2_norm

    from elama.parallel import cpu

    cpu.apply_cpu_device_layer()
    g = torch.Generator().manual_seed(0)
    # an embedding-sized gradient with a mean: float32 summation drifts by ~1e-3 relative
    grads = [torch.randn(128256, 64, generator=g) * 1e-3 + 1e-3,
             torch.randn(1000, generator=g) * 1e-3]
    exact = sum(float(t.double().square().sum()) for t in grads) ** 0.5
    fallback = float(local_multi_tensor_l2_norm(0, None, [grads], False)[0])
    assert abs(fallback - exact) / exact > 1e-5  # what the CPU layer replaces
    from megatron.core.optimizer import clip_grads

    assert clip_grads.l2_norm_impl is cpu._exact_l2_norm
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in grads]
    for p, t in zip(params, grads):
        p.grad = t.clone()
    before = dict(cpu.HITS)
    norm = clip_grads.get_grad_norm_fp32([p.grad for p in params],
                                         grad_stats_parallel_group=_world_of_one())
    assert norm == pytest.approx(exact, rel=1e-7)
    assert sum(cpu.HITS.values()) > sum(before.values())  # counted as a listed site


def _world_of_one():
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    return dist.group.WORLD


def test_clip_in_place_equals_megatrons_clip():
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    from elama.optim import clip_grads_in_place
    from elama.parallel import cpu

    cpu.apply_cpu_device_layer()
    g = torch.Generator().manual_seed(1)
    ours = [torch.nn.Parameter(torch.zeros(n)) for n in (300, 7, 4096)]
    theirs = [torch.nn.Parameter(torch.zeros(n)) for n in (300, 7, 4096)]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(a.numel(), generator=g)
        b.grad = a.grad.clone()
    storage = [p.grad.data_ptr() for p in ours]
    clip_grads_in_place(ours, max_norm=1.0, total_norm=40.0, use_decoupled_grad=False)
    clip_grad_by_total_norm_fp32(theirs, max_norm=1.0, total_norm=40.0)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)  # the same products, bit for bit
    assert [p.grad.data_ptr() for p in ours] == storage  # in place
    assert float(ours[0].grad.norm()) < 1.0


def test_fused_adam_is_switched_on_for_torchs_adamw():
    from types import SimpleNamespace

    from elama.optim import maybe_fuse_adam

    params = [torch.nn.Parameter(torch.randn(10)) for _ in range(2)]
    inner = torch.optim.AdamW(params, lr=1e-3)
    chained = SimpleNamespace(chained_optimizers=[SimpleNamespace(optimizer=inner)])
    assert maybe_fuse_adam(chained, False) == 0 and not inner.param_groups[0]["fused"]
    assert maybe_fuse_adam(chained, True) == 1 and inner.param_groups[0]["fused"]
    for p in params:
        p.grad = torch.ones_like(p)
    inner.step()  # runs torch's fused kernel
    assert all(float(inner.state[p]["step"]) == 1 for p in params)
