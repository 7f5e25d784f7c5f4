"""Checkpoints: the run-directory layout, megatron-core dist_checkpointing save/load, the tracker.

    <run_dir>/latest_checkpointed_iteration.txt   the step of the newest complete checkpoint
    <run_dir>/iter_0000020/model/                   model weights (dist_checkpointing, any layout)
    <run_dir>/iter_0000020/optimizer/               optimizer state (dp_reshardable or fully reshardable)
    <run_dir>/iter_0000020/rng/                     per-rank RNG states (restored on the same layout)
    <run_dir>/iter_0000020/meta.json                TrainState, config, data plan, versions

A checkpoint is written under `iter_NNNNNNN.tmp`, renamed when every part is on disk, and only
then named by the tracker (written last, atomically), so a kill at any point leaves the previous
checkpoint loadable. With async saving (checkpoint.async_save) the model and optimizer shards are
written by a background process per rank; the rename and the tracker happen when every rank's
write has finished (Saver.maybe_commit). A converted Hugging Face model has the same layout with model/ and meta.json
only (kind "weights"): what `init_from` loads.
"""
from __future__ import annotations

import io
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
# dp_reshardable (megatron's default): each dp rank writes its own optimizer shard, nothing is
# gathered; it resumes at the same tp/pp only. fully_reshardable gathers each shard over dp into
# model space, so it loads into any tp/pp/dp. Checkpoints record theirs in meta.json.
OPTIMIZER_FORMATS = ("dp_reshardable", "fully_reshardable")
LEGACY_OPTIMIZER_FORMAT = "fully_reshardable"  # checkpoints written before the choice existed


def optimizer_metadata(fmt: str) -> dict:
    if fmt not in OPTIMIZER_FORMATS:
        raise CheckpointError(f"checkpoint.optimizer_format={fmt!r} is not one of {OPTIMIZER_FORMATS}")
    return {"distrib_optim_sharding_type": fmt}


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


def relayout_problem(meta: dict, parallel, where) -> str | None:
    """Why this run's model-parallel layout cannot load the optimizer state in `where`, or None.
    dp_reshardable state follows the distributed optimizer's buckets, which tp, pp and vpp shape."""
    saved = meta.get("config", {}).get("parallel", {})
    fmt = meta.get("optimizer_format", LEGACY_OPTIMIZER_FORMAT)
    if fmt != "dp_reshardable" or not saved.get("distributed_optimizer"):
        return None
    changed = [f"parallel.{k}={getattr(parallel, k)} (saved {saved.get(k)})"
               for k in ("tp", "pp", "vpp") if saved.get(k) != getattr(parallel, k)]
    if not changed:
        return None
    return (f"{where} holds dp_reshardable optimizer state, which loads only at the tp/pp/vpp "
            f"that saved it, but this run has {', '.join(changed)}: resume once at the saved "
            f"layout with checkpoint.optimizer_format=fully_reshardable and "
            f"train.exit_interval=<next step> (it saves a reshardable checkpoint), then change "
            "the layout")


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
    text = json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n"
    write_durable(Path(iter_dir) / "meta.json", text.encode())


def write_durable(path: Path, data: bytes) -> None:
    """Write and fsync a file: on disk even if the node crashes right after."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that a rename or a new entry in it survives a crash of the node."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def model_sharded_state_dict(chunks: list) -> dict:
    """The chunks' sharded state dict, keyed model0, model1, ... by virtual stage. Tensors are
    addressed by global keys and offsets, so any tp/pp/vpp layout can load what another saved."""
    return {f"model{i}": unwrap_model(chunk).sharded_state_dict() for i, chunk in enumerate(chunks)}


def _one_request(requests: list):
    """The parts' async writes as one request, run one after the other by one background
    process. Two requests in flight at once would race: megatron's writers of one process share
    one results queue (filesystem_async.py, _get_write_results_queue), so a part could finalize
    with the other's write results (measured: a model directory whose metadata misses chunks)."""
    from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest

    staged = []
    for request in requests:
        args = list(request.async_fn_args)
        if request.preload_fn:  # the copy to host memory: done here, before the fork
            args[1] = request.preload_fn()
        staged.append((request.async_fn, args, request.async_fn_kwargs))

    def write_parts():
        for fn, args, kwargs in staged:
            if fn is not None:
                fn(*args, **kwargs)

    return AsyncRequest(write_parts, (), [fn for r in requests for fn in r.finalize_fns])


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
    if not directory.is_dir() or not (directory / "metadata.json").exists():
        raise CheckpointError(f"{directory}: no model weights here")
    state = dist_checkpointing.load(model_sharded_state_dict(chunks), str(directory),
                                    strict=StrictHandling.RAISE_ALL)
    for i, chunk in enumerate(chunks):
        unwrap_model(chunk).load_state_dict(state[f"model{i}"], strict=True)


def optimizer_sharded_state_dict(optimizer, chunks: list, fmt: str) -> dict:
    return optimizer.sharded_state_dict(model_sharded_state_dict(chunks), is_loading=False,
                                        metadata=optimizer_metadata(fmt))


def load_optimizer(optimizer, chunks: list, directory: str | Path, fmt: str) -> None:
    """Collective: restore optimizer state saved in format `fmt` (after load_model and after the
    optimizer was built, so its master weights exist to be overwritten). With torch's Adam the
    caller applies elama.parallel.patches around this call."""
    template = optimizer.sharded_state_dict(model_sharded_state_dict(chunks), is_loading=True,
                                            metadata=optimizer_metadata(fmt))
    # RAISE_UNEXPECTED: everything asked for must be there; a distributed optimizer's saved fp32
    # master weights may go unused by a plain optimizer (its masters are the weights themselves).
    state = dist_checkpointing.load(template, str(directory),
                                    strict=StrictHandling.RAISE_UNEXPECTED)
    # The dp_reshardable loader copies into the fp32 master weights (leaves that require grad)
    # without no_grad (distrib_optimizer.py, load_parameter_state_from_dp_reshardable): the
    # "failed to load on CPU" of the notes, and the same on a GPU.
    with torch.no_grad():
        optimizer.load_state_dict(state)


def save_rng(directory: str | Path, layout: str) -> None:
    """Every rank's generator states (Python, NumPy, torch, the tensor-parallel tracker)."""
    directory = Path(directory)
    if _rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    _barrier()
    buffer = io.BytesIO()
    torch.save({"layout": layout, **rng.get_states()}, buffer)
    write_durable(directory / f"rank_{_rank():05d}.pt", buffer.getvalue())


def load_rng(directory: str | Path, layout: str, saved_layout: str | None = None) -> bool:
    """Restore this rank's generator states when the layout is the one that saved them. A file
    missing while the layout is unchanged (saved_layout, from meta.json) is refused: resuming
    would re-seed this rank's streams without a word."""
    path = Path(directory) / f"rank_{_rank():05d}.pt"
    if not path.exists():
        if saved_layout == layout:
            raise CheckpointError(f"{path} is missing, but this run has the layout that saved "
                                  f"{Path(directory).parent} ({layout}): the checkpoint is "
                                  "incomplete; resume from an earlier iter_* (point the tracker "
                                  "at it) or restore the file")
        logger.warning("no RNG state %s for layout %s: streams re-seeded", path.name, layout)
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


class Saver:
    """Saves checkpoints (collective): weights, optimizer state, RNG, metadata, then the commit.

    Both formats save fully parallel (the replicas of a tensor split its writes over dp ranks,
    as megatron's own default). With async_save the shards go to a background process per rank
    through megatron-core's async calls queue: save() blocks only for the planning and the
    copy-on-write fork; maybe_commit() (every step, on every rank) renames the directory and
    moves the tracker once every rank's write has finished. One save is in flight at a time."""

    def __init__(self, *, optimizer_format: str, async_save: bool):
        optimizer_metadata(optimizer_format)  # refuses an unknown format now, not at the save
        self.optimizer_format, self.async_save = optimizer_format, async_save
        self._queue = None
        self._strategies: dict[str, object] = {}
        self.pending: int | None = None
        """Step of the save in flight (async), None when every save is committed."""

    def save(self, run_dir: str | Path, step: int, *, model: list, optimizer, meta: dict,
             layout: str, keep_last: int) -> None:
        self.wait()
        tmp = begin(run_dir, step)
        save_rng(tmp / "rng", layout)
        if _rank() == 0:
            write_meta(tmp, {**meta, "optimizer_format": self.optimizer_format})
        parts = {"model": model_sharded_state_dict(model),
                 "optimizer": optimizer_sharded_state_dict(optimizer, model, self.optimizer_format)}
        if _rank() == 0:
            for name in parts:
                (tmp / name).mkdir()  # the torch_dist writer expects its directory
        _barrier()
        requests = [dist_checkpointing.save(state, str(tmp / name), self._strategy(name),
                                            async_sharded_save=self.async_save)
                    for name, state in parts.items()]
        if not self.async_save:
            commit(run_dir, step, keep_last)
            return
        request = _one_request(requests)
        request.add_finalize_fn(lambda: commit(run_dir, step, keep_last))
        if self._queue is None:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self._queue = AsyncCallsQueue()
        self._queue.schedule_async_request(request)
        self.pending = step

    def _strategy(self, part: str):
        """Fully parallel torch_dist writing over the data-parallel group, its distribution of
        writes cached per part (the same tensors every save)."""
        if part not in self._strategies:
            from megatron.core.dist_checkpointing.serialization import (
                get_default_save_sharded_strategy)
            from megatron.core.dist_checkpointing.strategies.fully_parallel import (
                FullyParallelSaveStrategyWrapper)

            from elama.parallel import setup

            self._strategies[part] = FullyParallelSaveStrategyWrapper(
                get_default_save_sharded_strategy(), setup.dp_group(), do_cache_distribution=True)
        return self._strategies[part]

    def maybe_commit(self, blocking: bool = False) -> int | None:
        """Commit the save in flight if every rank finished writing it (all of them, blocking).
        Collective whenever a save is in flight. Returns the step committed, if any."""
        if self.pending is None:
            return None
        self._queue.maybe_finalize_async_calls(blocking=blocking)
        if self._queue.get_num_unfinalized_calls():
            return None
        step, self.pending = self.pending, None
        return step

    def wait(self) -> None:
        self.maybe_commit(blocking=True)

    def close(self) -> None:
        self.wait()
        if self._queue is not None:
            self._queue.close()


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
        fsync_dir(run_dir)  # the rename reaches the disk before the tracker names it
        write_tracker(run_dir, step)
        fsync_dir(run_dir)
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
