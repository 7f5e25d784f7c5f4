"""Process groups and seeds: the only module that touches megatron.core.parallel_state.

Everything else in elama asks this module for ranks, groups and stage positions, so that the
global state megatron-core keeps has a single owner on our side.
"""
from __future__ import annotations

import datetime
import logging
import os
import random

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.pipeline_parallel import get_forward_backward_func

from elama.parallel.dims import ParallelDims

logger = logging.getLogger(__name__)


def apply_launcher_env() -> int:
    """Rank variables from the launcher; returns the world size.

    torchrun sets RANK/WORLD_SIZE/LOCAL_RANK. Under srun with one task per rank (how
    launch/train.sbatch starts ranks, so that exit codes and signals reach every rank) they come
    from SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID; MASTER_ADDR/PORT are exported by the script."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env.get("SLURM_NTASKS", "1")
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    return int(env.get("WORLD_SIZE", "1"))


def init_distributed(dims: ParallelDims, *, device: str, seed: int, timeout_s: int = 1800) -> None:
    """Start torch.distributed from the torchrun/Slurm environment, then megatron's groups.

    On device=cpu the CPU device layer is applied first: megatron-core seeds its CUDA RNG tracker
    inside model_parallel_cuda_manual_seed below. Without a launcher (no MASTER_ADDR) a world of
    one process starts on an in-memory store: `python -m elama.train ...` as a plain process.
    """
    apply_device_env(dims)
    if device == "cpu":
        from elama.parallel.cpu import apply_cpu_device_layer

        apply_cpu_device_layer()
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size != dims.world_size:
            raise RuntimeError(f"WORLD_SIZE={world_size} from the launcher but the layout needs "
                               f"{dims.world_size} processes ({dims.describe()})")
        backend, timeout = "gloo" if device == "cpu" else "nccl", datetime.timedelta(seconds=timeout_s)
        if world_size == 1 and "MASTER_ADDR" not in os.environ:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timeout)
        else:
            dist.init_process_group(backend=backend, timeout=timeout)
    init_model_parallel_groups(dims, timeout_s=timeout_s)
    set_seeds(seed)
    logger.info("process groups ready: %s, backend %s", dims.describe(), dist.get_backend())


def init_model_parallel_groups(dims: ParallelDims, *, timeout_s: int = 1800,
                               gloo_groups: bool = True) -> None:
    """megatron's tp/pp/cp/dp groups on an initialised default group. The fake-backend dry run
    (elama/parallel/fake.py) passes gloo_groups=False: gloo cannot sit on a fake world."""
    ps.initialize_model_parallel(
        tensor_model_parallel_size=dims.tp,
        pipeline_model_parallel_size=dims.pp,
        virtual_pipeline_model_parallel_size=dims.vpp if dims.vpp > 1 else None,
        context_parallel_size=dims.cp,
        distributed_timeout_minutes=max(1, timeout_s // 60),
        create_gloo_process_groups=gloo_groups,
    )


def cp_rank() -> int:
    return ps.get_context_parallel_rank()


def apply_device_env(dims: ParallelDims) -> None:
    """CUDA_DEVICE_MAX_CONNECTIONS=1 with tensor parallelism, before any CUDA context exists:
    megatron-core's async TP / sequence-parallel communication relies on one hardware queue to
    start before the GEMM it overlaps (tensor_parallel/layers.py warns per rank otherwise; on CPU
    the variable only answers that check). A value the user exported wins."""
    if dims.tp > 1:
        os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")


def set_seeds(seed: int) -> None:
    """Megatron's seeding: one stream per pipeline stage for init, per-tp-rank streams in the
    (CUDA, on CPU: CPU-backed) RNG tracker for tensor-parallel regions."""
    stage_seed = seed + 100 * ps.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    tensor_parallel.model_parallel_cuda_manual_seed(stage_seed)


def destroy_distributed() -> None:
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def comm_device() -> torch.device:
    """Where tensors for collectives must live: the GPU under NCCL, the CPU under gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def tp_rank() -> int:
    return ps.get_tensor_model_parallel_rank()


def tp_group():
    return ps.get_tensor_model_parallel_group()


def pp_rank() -> int:
    return ps.get_pipeline_model_parallel_rank()


def pp_group():
    return ps.get_pipeline_model_parallel_group()


def dp_rank() -> int:
    return ps.get_data_parallel_rank()


def dp_group():
    return ps.get_data_parallel_group()


def is_first_stage(vp_stage: int | None = None) -> bool:
    """First pipeline stage; with vp_stage, the first model chunk of the whole pipeline."""
    if vp_stage is None:
        return ps.is_pipeline_first_stage(ignore_virtual=True)
    return ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)


def is_last_stage(vp_stage: int | None = None) -> bool:
    if vp_stage is None:
        return ps.is_pipeline_last_stage(ignore_virtual=True)
    return ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)


def last_stage_rank() -> int:
    """Global rank of the last pipeline stage in this rank's pipeline group."""
    return ps.get_pipeline_model_parallel_last_rank()


def forward_backward_func():
    """megatron's schedule for the current layout: no pipelining, 1F1B, or interleaved 1F1B."""
    return get_forward_backward_func()


def init_single_process(*, device: str = "cpu", seed: int = 0) -> None:
    """A world of one process without a launcher (planning, counting, single-rank tools):
    an in-memory store instead of MASTER_ADDR/PORT."""
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo" if device == "cpu" else "nccl",
                                store=dist.HashStore(), rank=0, world_size=1)
    init_distributed(ParallelDims(tp=1, pp=1, vpp=1, cp=1, dp=1, world_size=1),
                     device=device, seed=seed)
