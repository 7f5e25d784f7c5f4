"""Console output of elama's commands: the log format per rank, and the one list of third-party
warnings silenced as harmless, each with why (ELAMA_SHOW_WARNINGS=1 shows every warning).

`quiet_warnings()` must run before megatron-core is imported: most of these warn at import time.
"""
from __future__ import annotations

import logging
import os
import warnings

SHOW_WARNINGS_ENV = "ELAMA_SHOW_WARNINGS"

# (message regex, category, why it is harmless). Warnings of elama's own making are fixed at
# their source instead: TransformerConfig gets cuda_graph_scope=[] (no "full scope is deprecated"),
# the launcher env sets CUDA_DEVICE_MAX_CONNECTIONS=1 for tensor parallelism
# (elama.parallel.setup.apply_device_env), and elama calls no deprecated collective itself.
HARMLESS_WARNINGS = (
    (r"Transformer Engine and Apex are not installed", UserWarning,
     "megatron-core falls back to torch's Adam and its own multi-tensor helpers; on CPU they are "
     "the only ones possible, and a GPU config that needs TE (transformer_impl=te, fp8) is refused "
     "by validation when TE is missing"),
    (r"Apex is not installed\. Falling back to Torch Norm", UserWarning,
     "the local layer spec uses torch's RMSNorm (elama/model/norm.py for sequence parallel), "
     "numerically the same normalisation"),
    (r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
     FutureWarning,
     "called by megatron-core 0.16.1 (tensor_parallel/mappings.py, distributed/ buffers), not by "
     "elama; torch 2.13 renamed these collectives, the operation is the same"),
    (r".*deprecating ShardedTensor", FutureWarning,
     "torch.distributed.checkpoint, under megatron-core's dist_checkpointing, still touches the "
     "legacy ShardedTensor type; elama's checkpoints hold plain tensors"),
    (r"`load_state_dict` is deprecated", FutureWarning,
     "megatron-core 0.16.1's torch_dist strategy (dist_checkpointing/strategies/torch.py) calls "
     "torch.distributed.checkpoint.load_state_dict, which torch renamed to load: the same reader"),
    (r"torch\.distributed is disabled, unavailable or uninitialized", UserWarning,
     "the exporter and the converter read a distributed checkpoint in one process without a "
     "process group on purpose (streamed, one layer at a time); torch then loads locally"),
)


def warnings_shown() -> bool:
    return os.environ.get(SHOW_WARNINGS_ENV, "") not in ("", "0")


def quiet_warnings() -> None:
    """Silence HARMLESS_WARNINGS in this process, unless ELAMA_SHOW_WARNINGS=1.

    Filters are per process: every elama entry point (train, plan, tools) calls this first."""
    if warnings_shown():
        return
    for message, category, _why in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def launcher_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def setup_logging(rank: int | None = None) -> None:
    """Rank 0 logs INFO, the others WARNING (one metrics line per step, not one per rank);
    harmless third-party warnings silenced first."""
    quiet_warnings()
    rank = launcher_rank() if rank is None else rank
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[%(asctime)s rank{rank} %(name)s] %(message)s", datefmt="%H:%M:%S")
    # megatron-core logs every parameter name and config field at INFO: keep its warnings only.
    logging.getLogger("megatron").setLevel(logging.WARNING)
