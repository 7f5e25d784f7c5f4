"""Validate a parallel layout for N GPUs without having them, and print what each rank holds.

    python -m elama.plan model=llama3.1-70b parallel.tp=8 parallel.pp=4 --world-size 480
    python -m elama.plan experiment=cpt_8b_ecom --nodes 60 --gpus-per-node 8

Parameter counts come from megatron-core's real modules built on the meta device. A wrong layout
lists every problem at once and exits 2.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from elama.config import ConfigError, ElamaConfig, load_config, validate

GIB = 1024**3


@dataclass(frozen=True)
class Plan:
    world_size: int
    dims: object
    counts: object
    tokens_per_step: int
    microbatches: int
    flops_per_step: float
    memory_gib: dict


def build_plan(cfg: ElamaConfig, world_size: int) -> Plan:
    """Validate (planning mode) and compute the per-rank picture; raises ConfigError."""
    validate(cfg, world_size, planning=True)
    from elama.model.llama import count_parameters, flops_per_token
    from elama.parallel import setup
    from elama.parallel.dims import ParallelDims

    dims = ParallelDims.from_config(cfg.parallel, world_size)
    setup.init_single_process()
    try:
        counts = count_parameters(cfg.model, dims)
    finally:
        setup.destroy_distributed()
    t, seq = cfg.train, cfg.data.seq_len_tokens
    tokens = t.global_batch_size * seq
    return Plan(world_size=world_size, dims=dims, counts=counts, tokens_per_step=tokens,
                microbatches=dims.num_microbatches(t.global_batch_size, t.micro_batch_size),
                flops_per_step=flops_per_token(cfg.model, seq) * tokens,
                memory_gib=memory_per_rank_gib(cfg, dims, counts.max_per_rank))


def memory_per_rank_gib(cfg: ElamaConfig, dims, params: int) -> dict:
    """Rough per-GPU memory of the fullest rank. Weights in the training dtype, fp32 gradient
    buffers, fp32 master weights + Adam moments (sharded over dp by the distributed optimizer);
    activations of the first stage, which holds pp microbatches in flight under 1F1B, per
    Korthikanti et al. 2022 with flash attention (34*s*b*h per layer, / tp with sequence parallel)."""
    weight_bytes = 4 if cfg.model.precision == "fp32" else 2
    optimizer = 12 * params / (dims.dp if cfg.parallel.distributed_optimizer else 1)
    m, s, b = cfg.model, cfg.data.seq_len_tokens, cfg.train.micro_batch_size
    per_layer = 34 * s * b * m.hidden_size / (dims.tp if dims.sequence_parallel else 1)
    if m.recompute == "full":
        per_layer = 2 * s * b * m.hidden_size  # only each layer's input is kept
    layers_per_stage = m.num_layers // dims.pp
    in_flight = min(dims.pp, dims.num_microbatches(cfg.train.global_batch_size, b))
    activations = per_layer * layers_per_stage * in_flight
    return {"weights": weight_bytes * params / GIB, "grads": 4 * params / GIB,
            "optimizer": optimizer / GIB, "activations": activations / GIB}


def format_plan(cfg: ElamaConfig, plan: Plan) -> str:
    c, d = plan.counts, plan.dims
    mem = plan.memory_gib
    lines = [
        f"layout: {d.describe()}",
        f"model: {cfg.model.name}, {c.total:,} parameters ({c.embedding:,} embedding)",
        "parameters per rank by pipeline stage: "
        + ", ".join(f"stage {i}: {n:,}" for i, n in enumerate(c.per_stage)),
        f"parameters per rank (max): {c.max_per_rank:,}",
        f"batch: {cfg.train.global_batch_size} sequences x {cfg.data.seq_len_tokens} tokens = "
        f"{plan.tokens_per_step:,} tokens per step; micro batch {cfg.train.micro_batch_size}, "
        f"{plan.microbatches} microbatches per step per data-parallel rank",
        f"tokens for {cfg.train.train_steps:,} steps: {plan.tokens_per_step * cfg.train.train_steps:,}",
        f"training FLOPs per step: {plan.flops_per_step:.3e}",
        "memory per rank, approx (GiB): " + ", ".join(f"{k} {v:.1f}" for k, v in mem.items())
        + f", total {sum(mem.values()):.1f}",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elama.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. parallel.tp=8")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--world-size", type=int, help="total GPUs (processes)")
    size.add_argument("--nodes", type=int, help="nodes, with --gpus-per-node")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    args = parser.parse_intermixed_args(argv)  # overrides before or after the options
    world_size = args.world_size or args.nodes * args.gpus_per_node
    try:
        cfg = load_config(args.overrides)
        plan = build_plan(cfg, world_size)
    except ConfigError as e:
        print(f"elama.plan: {e}", file=sys.stderr)
        return 2
    print(format_plan(cfg, plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
