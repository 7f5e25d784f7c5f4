"""Dry runs on torch's fake process-group backend: one CPU process plays each rank of a large
layout in turn, builds megatron's process groups and that rank's pipeline-stage layers on the meta
device, and reports where everything landed. Nothing is communicated or allocated."""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from elama.parallel import setup
from elama.parallel.dims import ParallelDims


@dataclass(frozen=True)
class RankBuild:
    rank: int
    tp_rank: int
    cp_rank: int
    dp_rank: int
    pp_rank: int
    group_sizes: tuple
    """(tp, pp, dp) group sizes as megatron's groups report them."""
    layers: tuple
    """0-based global layer numbers of each model chunk (virtual stage) on this rank."""
    pre_process: tuple
    post_process: tuple
    params: int


@contextmanager
def fake_rank(dims: ParallelDims, rank: int):
    """torch.distributed and megatron's groups as rank `rank` of dims.world_size, on the fake
    backend; torn down on exit."""
    dist.init_process_group("fake", store=dist.HashStore(), rank=rank,
                            world_size=dims.world_size)
    try:
        setup.init_model_parallel_groups(dims, gloo_groups=False)
        yield
    finally:
        setup.destroy_distributed()


def build_rank(cfg, dims: ParallelDims, rank: int) -> RankBuild:
    """Build rank `rank`'s model chunks on the meta device (megatron's local modules: same
    parameters as Transformer Engine's, no CUDA needed) and report its place in the layout."""
    from elama.model.llama import transformer_config
    from elama.parallel.wrap import build_model_chunks

    meta = dataclasses.replace(cfg, device="cpu", model=dataclasses.replace(
        cfg.model, transformer_impl="local", precision="fp32"))
    with fake_rank(dims, rank):
        tc = transformer_config(meta.model, dims, device="cpu")
        tc.perform_initialization = False  # nothing to initialise on meta; shapes are the same
        with torch.device("meta"):
            chunks = build_model_chunks(meta, tc, dims)
        return RankBuild(
            rank=rank, tp_rank=setup.tp_rank(), cp_rank=setup.cp_rank(), dp_rank=setup.dp_rank(),
            pp_rank=setup.pp_rank(),
            group_sizes=tuple(dist.get_world_size(g()) for g in
                              (setup.tp_group, setup.pp_group, setup.dp_group)),
            layers=tuple(tuple(layer.layer_number - 1 for layer in c.decoder.layers)
                         for c in chunks),
            pre_process=tuple(c.pre_process for c in chunks),
            post_process=tuple(c.post_process for c in chunks),
            params=sum(p.numel() for c in chunks for p in c.parameters()))


def dry_run(cfg, dims: ParallelDims, ranks=None) -> list:
    """RankBuild of every rank (or of `ranks`), one after another in this process."""
    return [build_rank(cfg, dims, r) for r in (range(dims.world_size) if ranks is None else ranks)]
