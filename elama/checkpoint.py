"""Checkpoints: the run-directory layout, megatron-core dist_checkpointing save/load, the tracker.

    <run_dir>/latest_checkpointed_iteration.txt   the step of the newest complete checkpoint
    <run_dir>/iter_0000020/model/                   model weights (dist_checkpointing, any layout)
    <run_dir>/iter_0000020/optimizer/               optimizer state (fully reshardable)
    <run_dir>/iter_0000020/rng/                     per-rank RNG states (restored on the same layout)
    <run_dir>/iter_0000020/meta.json                TrainState, config, data plan, versions

A checkpoint is written under `iter_NNNNNNN.tmp`, renamed when every part is on disk, and only
then named by the tracker (written last, atomically), so a kill at any point leaves the previous
checkpoint loadable. A converted Hugging Face model has the same layout with model/ and meta.json
only (kind "weights"): what `init_from` loads.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.validation import StrictHandling
from megatron.core.utils import unwrap_model

from elama.parallel import rng

logger = logging.getLogger(__name__)

TRACKER = "latest_checkpointed_iteration.txt"
FORMAT_VERSION = 1
# fully_reshardable: the distributed optimizer's state is saved in model space, so a checkpoint
# loads into another tp/pp/dp layout (dp_reshardable cannot change pp; measured on CPU).
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not fit the run."""


def iter_name(step: int) -> str:
    return f"iter_{step:07d}"


def read_tracker(run_dir: str | Path) -> int | None:
    """Step of the newest committed checkpoint in run_dir, or None when there is none."""
    path = Path(run_dir) / TRACKER
    if not path.exists():
        return None
    text = path.read_text().strip()
    if not text.isdigit():
        raise CheckpointError(f"{path}: expected a step number, found {text!r}")
    return int(text)


def write_tracker(run_dir: str | Path, step: int) -> None:
    """Point the tracker at `step` atomically (write a temp file, fsync, rename)."""
    path = Path(run_dir) / TRACKER
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(f"{step}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def resolve(path: str | Path) -> Path:
    """An iteration directory from a run directory (through its tracker) or the directory itself."""
    path = Path(path)
    if (path / "meta.json").exists():
        return path
    step = read_tracker(path) if path.is_dir() else None
    if step is None:
        raise CheckpointError(f"{path}: neither a checkpoint (no meta.json) nor a run directory "
                              f"with a {TRACKER}; give the output of a training run or of "
                              "tools/convert_checkpoint.py")
    found = path / iter_name(step)
    if not (found / "meta.json").exists():
        raise CheckpointError(f"{path / TRACKER} names step {step}, but {found} is incomplete")
    return found


def read_meta(iter_dir: str | Path) -> dict:
    path = Path(iter_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint metadata ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta.get('format_version')} is not "
                              f"{FORMAT_VERSION}, the one this elama reads")
    return meta


def write_meta(iter_dir: str | Path, meta: dict) -> None:
    meta = {"format_version": FORMAT_VERSION, **meta}
    path = Path(iter_dir) / "meta.json"
    path.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


def model_sharded_state_dict(chunks: list) -> dict:
    """The chunks' sharded state dict, keyed model0, model1, ... by virtual stage. Tensors are
    addressed by global keys and offsets, so any tp/pp/vpp layout can load what another saved."""
    return {f"model{i}": unwrap_model(chunk).sharded_state_dict() for i, chunk in enumerate(chunks)}


def save_model(chunks: list, directory: str | Path) -> None:
    """Collective: every rank writes its shards of the weights."""
    directory = Path(directory)
    if _rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)  # the torch_dist writer expects it
    _barrier()
    dist_checkpointing.save(model_sharded_state_dict(chunks), str(directory))


def load_model(chunks: list, directory: str | Path) -> None:
    """Collective: load weights saved by any layout into these chunks, strictly (a missing or
    unexpected tensor raises)."""
    directory = Path(directory)
    if not (directory / "metadata.json").exists() and not directory.is_dir():
        raise CheckpointError(f"{directory}: no model weights here")
    state = dist_checkpointing.load(model_sharded_state_dict(chunks), str(directory),
                                    strict=StrictHandling.RAISE_ALL)
    for i, chunk in enumerate(chunks):
        unwrap_model(chunk).load_state_dict(state[f"model{i}"], strict=True)


def save_optimizer(optimizer, chunks: list, directory: str | Path) -> None:
    """Collective: optimizer state (Adam moments, fp32 master weights) in a layout-free form."""
    directory = Path(directory)
    if _rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    _barrier()
    state = optimizer.sharded_state_dict(model_sharded_state_dict(chunks), is_loading=False,
                                         metadata=OPTIMIZER_METADATA)
    dist_checkpointing.save(state, str(directory))


def load_optimizer(optimizer, chunks: list, directory: str | Path) -> None:
    """Collective: restore optimizer state saved by any layout (after load_model and after the
    optimizer was built, so its master weights exist to be overwritten)."""
    from elama.optim import (
        apply_torch_adam_load_fixes,
        apply_torch_adam_load_patch,
        init_torch_adam_state,
    )

    init_torch_adam_state(optimizer)
    apply_torch_adam_load_patch(optimizer)
    template = optimizer.sharded_state_dict(model_sharded_state_dict(chunks), is_loading=True,
                                            metadata=OPTIMIZER_METADATA)
    # RAISE_UNEXPECTED: everything asked for must be there; a distributed optimizer's saved fp32
    # master weights may go unused by a plain optimizer (its masters are the weights themselves).
    state = dist_checkpointing.load(template, str(directory),
                                    strict=StrictHandling.RAISE_UNEXPECTED)
    optimizer.load_state_dict(state)
    apply_torch_adam_load_fixes(optimizer)


def save_rng(directory: str | Path, layout: str) -> None:
    """Every rank's generator states (Python, NumPy, torch, the tensor-parallel tracker)."""
    directory = Path(directory)
    if _rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    _barrier()
    torch.save({"layout": layout, **rng.get_states()}, directory / f"rank_{_rank():05d}.pt")


def load_rng(directory: str | Path, layout: str) -> bool:
    """Restore this rank's generator states when the layout is the one that saved them."""
    path = Path(directory) / f"rank_{_rank():05d}.pt"
    if not path.exists():
        return False
    saved = torch.load(path, weights_only=False)
    if saved.pop("layout") != layout:
        logger.warning("layout changed since the checkpoint: RNG streams re-seeded, not restored")
        return False
    rng.set_states(saved)
    return True


def find_resume(run_dir: str | Path) -> Path | None:
    """The checkpoint a run resumes from: the tracker's, when run_dir holds one."""
    return resolve(run_dir) if read_tracker(run_dir) is not None else None


def save_checkpoint(run_dir: str | Path, step: int, *, model: list, optimizer, meta: dict,
                    layout: str, keep_last: int) -> Path:
    """Collective: weights, optimizer state, RNG and metadata, committed atomically."""
    tmp = begin(run_dir, step)
    save_model(model, tmp / "model")
    save_optimizer(optimizer, model, tmp / "optimizer")
    save_rng(tmp / "rng", layout)
    if _rank() == 0:
        write_meta(tmp, meta)
    return commit(run_dir, step, keep_last)


def versions() -> dict:
    """Library versions recorded beside a checkpoint."""
    import importlib.metadata as md

    out = {}
    for package in ("elama", "megatron-core", "torch", "transformer-engine"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    return out


def begin(run_dir: str | Path, step: int) -> Path:
    """The temporary directory a checkpoint is written into (cleared of a previous attempt)."""
    tmp = Path(run_dir) / (iter_name(step) + ".tmp")
    if _rank() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    return tmp


def commit(run_dir: str | Path, step: int, keep_last: int) -> Path:
    """Make the checkpoint in iter_NNNNNNN.tmp visible: rename it, then move the tracker, then
    delete checkpoints beyond keep_last. Collective; rank 0 touches the file system."""
    _barrier()  # every rank has finished writing its shards
    final = Path(run_dir) / iter_name(step)
    if _rank() == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(Path(run_dir) / (iter_name(step) + ".tmp"), final)
        write_tracker(run_dir, step)
        _prune(Path(run_dir), keep_last)
    _barrier()
    return final


def _prune(run_dir: Path, keep_last: int) -> None:
    done = sorted(p for p in run_dir.glob("iter_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
        logger.info("removed old checkpoint %s (keep_last=%d)", old.name, keep_last)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
