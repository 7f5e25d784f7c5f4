"""What one checkpoint save costs each rank of a layout, per optimizer format: bytes written,
bytes moved between ranks, seconds blocking and in total, against the preemption window
(launch/train.sbatch asks Slurm for USR1 300 s before the time limit). A model, not a measurement:
bench/ckpt.py measures the same quantities on a CPU layout."""
from __future__ import annotations

from dataclasses import dataclass

PREEMPTION_WINDOW_S = 300.0
OPTIMIZER_BYTES_PER_PARAM = 12  # fp32 master weight + Adam's two fp32 moments
WRITE_GB_S_PER_NODE = 10.0
"""Sustained checkpoint write bandwidth of one node to the parallel file system (Lustre/GPFS
clients reach 5-20 GB/s); every rank of the node shares it."""
COPY_GB_S = 20.0
"""Device-to-host copy per GPU (pinned memory over PCIe 5: ~25 GB/s peak): what an async save
blocks for."""


@dataclass(frozen=True)
class CheckpointCost:
    optimizer_format: str
    written_bytes: float
    """Bytes this rank writes per save (weights and optimizer state, fully parallel over dp)."""
    moved_bytes: float
    """Bytes this rank receives from other ranks during a save (the fully reshardable gather)."""
    held_bytes: float
    """Host memory the save holds on this rank beyond the training state (the gathered state)."""
    total_s: float
    """Seconds until the save is on disk: gather, then the node's share of the write bandwidth."""
    blocking_s: float
    """Seconds training waits with async saving: the gather (synchronous) and the copy."""

    @property
    def fits_window(self) -> bool:
        return self.total_s <= PREEMPTION_WINDOW_S


def checkpoint_cost(*, params_per_rank: int, dp: int, weight_bytes: int, distributed_optimizer: bool,
                    optimizer_format: str, network_gb_s: float, gpus_per_node: int,
                    write_gb_s_per_node: float = WRITE_GB_S_PER_NODE) -> CheckpointCost:
    """Cost per rank of one save. params_per_rank: the fullest model-parallel shard's parameters.

    Weights are replicated over dp and the fully parallel save splits their writes over the
    replicas. dp_reshardable writes each rank's own optimizer shard and moves nothing;
    fully_reshardable (megatron's model-space format) first all-gathers every model-parallel
    shard's optimizer state over dp, so each rank receives (dp-1)/dp of it."""
    weights = params_per_rank * weight_bytes
    optimizer = params_per_rank * OPTIMIZER_BYTES_PER_PARAM
    written = (weights + optimizer) / dp
    gathers = distributed_optimizer and optimizer_format == "fully_reshardable"
    moved = optimizer * (dp - 1) / dp if gathers else 0.0
    held = optimizer if gathers else 0.0
    own_optimizer = optimizer / dp if distributed_optimizer else optimizer
    gather_s = moved / (network_gb_s * 1e9)
    write_s = written * gpus_per_node / (write_gb_s_per_node * 1e9)
    copy_s = (weights + (held or own_optimizer)) / (COPY_GB_S * 1e9)
    return CheckpointCost(optimizer_format, written, moved, held, gather_s + copy_s + write_s,
                          gather_s + copy_s)


def format_checkpoint_cost(cfg, dims, params_per_rank: int, gpu) -> str:
    """The planner's line: per-rank checkpoint bytes and seconds of both formats vs the window."""
    weight_bytes = 4 if cfg.model.precision == "fp32" else 2
    parts = []
    for fmt in ("dp_reshardable", "fully_reshardable"):
        c = checkpoint_cost(params_per_rank=params_per_rank, dp=dims.dp, weight_bytes=weight_bytes,
                            distributed_optimizer=cfg.parallel.distributed_optimizer,
                            optimizer_format=fmt, network_gb_s=gpu.network_gb_s,
                            gpus_per_node=gpu.gpus_per_node)
        chosen = " (configured)" if fmt == cfg.checkpoint.optimizer_format else ""
        verdict = "within" if c.fits_window else "EXCEEDS"
        parts.append(f"{fmt}{chosen}: writes {c.written_bytes / 1e9:.2f} GB, moves "
                     f"{c.moved_bytes / 1e9:.2f} GB, holds {c.held_bytes / 1e9:.2f} GB more host "
                     f"memory, ~{c.total_s:.0f} s total, blocks "
                     f"~{c.blocking_s:.1f} s async ({verdict} the {PREEMPTION_WINDOW_S:.0f} s "
                     "preemption window)")
    return ("checkpoint per rank per save (model: "
            f"{WRITE_GB_S_PER_NODE:.0f} GB/s written per node): " + "; ".join(parts))
