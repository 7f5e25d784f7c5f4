"""The compute efficiency the cost model runs at, calibrated to published training runs.

Each reference is a published Llama 3 run: its layout, GPU count and measured tokens/s/GPU. The
cost model is solved for the efficiency (fraction of the dense tensor-core peak the kernels reach)
that reproduces each run with its own layout's communication, bubble and overlap; the planner uses
the mean over all references. e-Llama's own runs are not references: they are what the calibration
is checked against (tests/unit/test_plan_cost.py).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    source: str
    model: str
    gpus: int
    precision: str
    global_batch: int
    micro_batch: int
    seq_len: int
    tp: int
    pp: int
    vpp: int
    tokens_per_s_per_gpu: float
    recompute: str = "none"
    tp_comm_overlap: bool = False


# Megatron-Bridge, docs/performance-summary-archive.md, "25.11 NeMo Container", DGX-H100, FP8
# current scaling (744 and 719 model TFLOP/s/GPU). Megatron-Bridge turns on Transformer Engine's
# tp-comm overlap in these recipes; FSDP 8 (the 8B row) is modelled as a sharded optimizer with
# overlapped gathers, which is what it costs in communication.
# torchtitan, docs/performance.md, Table 1: Llama 3.1 8B, 8 H100, FSDP, local batch 2, seq 8192,
# selective activation checkpointing, BF16; eager and torch.compile (33-39% MFU in torchtitan's
# own FLOP count, which counts causal attention in full). Its H100s ran at a 500 W power limit,
# which puts these two on the low side.
REFERENCES = (
    Reference("Megatron-Bridge 25.11 DGX-H100 LLAMA3_8B FP8-CS", "llama3.1-8b", gpus=8,
              precision="fp8", global_batch=128, micro_batch=1, seq_len=8192, tp=1, pp=1, vpp=1,
              tokens_per_s_per_gpu=14451),
    Reference("Megatron-Bridge 25.11 DGX-H100 LLAMA3_70B FP8-CS", "llama3.1-70b", gpus=64,
              precision="fp8", global_batch=128, micro_batch=1, seq_len=8192, tp=4, pp=8, vpp=5,
              tokens_per_s_per_gpu=1602, tp_comm_overlap=True),
    Reference("torchtitan Table 1 Llama 3.1 8B FSDP BF16", "llama3.1-8b", gpus=8,
              precision="bf16", global_batch=16, micro_batch=2, seq_len=8192, tp=1, pp=1, vpp=1,
              tokens_per_s_per_gpu=5762, recompute="selective"),
    Reference("torchtitan Table 1 Llama 3.1 8B FSDP+compile BF16", "llama3.1-8b", gpus=8,
              precision="bf16", global_batch=16, micro_batch=2, seq_len=8192, tp=1, pp=1, vpp=1,
              tokens_per_s_per_gpu=6667, recompute="selective"),
)
REFERENCE_GPU = "h100-80gb"


@functools.lru_cache(maxsize=4)
def _model(name: str):
    from elama.config import load_config

    return load_config([f"model={name}"]).model


def reference_layout(ref: Reference):
    """(config, dims) of a reference run as the cost model sees it."""
    from elama.config import ElamaConfig
    from elama.parallel.dims import ParallelDims

    cfg = ElamaConfig()
    cfg.model = dataclasses.replace(_model(ref.model), precision=ref.precision,
                                    transformer_impl="te", recompute=ref.recompute)
    cfg.parallel = dataclasses.replace(cfg.parallel, tp=ref.tp, pp=ref.pp, vpp=ref.vpp,
                                       sequence_parallel=ref.tp > 1, distributed_optimizer=True,
                                       overlap_grad_reduce=True, overlap_param_gather=True)
    cfg.train = dataclasses.replace(cfg.train, global_batch_size=ref.global_batch,
                                    micro_batch_size=ref.micro_batch)
    cfg.data = dataclasses.replace(cfg.data, seq_len_tokens=ref.seq_len)
    dims = ParallelDims.from_config(cfg.parallel, ref.gpus)
    return cfg, dims


def implied_efficiency(ref: Reference) -> float:
    """The efficiency at which the cost model reproduces the reference's tokens/s/GPU."""
    from elama.planner.cost import estimate_step
    from elama.planner.gpus import GPUS
    from elama.planner.layout import param_shapes

    cfg, dims = reference_layout(ref)
    per_stage = param_shapes(cfg.model).per_stage(dims, cfg.model.num_layers)
    gpu = GPUS[REFERENCE_GPU]

    def tokens(eff: float) -> float:
        return estimate_step(cfg, dims, per_stage, gpu, eff,
                             tp_comm_overlap=ref.tp_comm_overlap).tokens_per_s_per_gpu

    low, high = 0.01, 1.5  # tokens/s grows monotonically with efficiency
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if tokens(mid) < ref.tokens_per_s_per_gpu else (low, mid)
    return (low + high) / 2


@functools.lru_cache(maxsize=1)
def implied_efficiencies() -> tuple:
    return tuple(implied_efficiency(ref) for ref in REFERENCES)


def calibrated_efficiency() -> float:
    values = implied_efficiencies()
    return sum(values) / len(values)
