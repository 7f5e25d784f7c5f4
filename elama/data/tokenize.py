"""Offline tokenization of .jsonl/.jsonl.gz/.jsonl.zst/.parquet into megatron-core indexed datasets:
plan units, run them on worker processes, commit one shard per input file, optionally merge them
into one prefix, count everything, and fail a run whose reject fraction is too high.

Output order is input order for any worker count; a rerun after a kill reuses every committed part
and shard and redoes the rest, so its output is byte-identical to an uninterrupted run's.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Sequence

from elama.data.backends import DEFAULT_BACKEND, backend_record, build_encoder, check_name
from elama.data.manifest import (TOKEN_DTYPE, build_manifest, load_json, manifest_path,
                                 pin_dataset, read_manifest, sum_counts, write_json_atomic)
from elama.data.readers import Unit, expand_inputs, input_format, plan_units
from elama.data.shards import (Assembler, TextSpec, assemble_shard, concat_datasets,
                               concat_rejects, dataset_files, load_part)
from elama.data.workers import Task, run_tasks
from elama.tokenizer import Llama3Tokenizer, load_tokenizer

logger = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 256 << 20  # of .jsonl per unit: a kill loses at most this much work
MIN_CHUNK_BYTES = 4 << 20
UNITS_PER_WORKER = 4  # full-size units; tapered ones (readers.chunk_offsets) end the schedule
DEFAULT_MAX_REJECT_FRACTION = 0.01


class TooManyRejectsError(RuntimeError):
    """The run rejected more than max_reject_fraction of the documents it read."""


@dataclass
class _Shard:
    """One input file's shard and the parts it is assembled from."""
    path: str
    prefix: str
    fingerprint: dict
    units: list[Unit] = field(default_factory=list)
    parts: list[dict | None] = field(default_factory=list)
    manifest: dict | None = None
    assembler: Assembler | None = None
    """Appends the shard's parts to it as they complete in order."""

    def part_prefix(self, k: int) -> str:
        return f"{self.prefix}.part{k:05d}"


def build_settings(tokenizer: Llama3Tokenizer, spec: TextSpec) -> dict:
    """The manifest fields that determine the bytes written; a rerun reuses only exact matches."""
    return {"tokenizer": {"name": tokenizer.name, "sha256": tokenizer.sha256,
                          "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
                          "eos_id": tokenizer.eos_id},
            "dtype": TOKEN_DTYPE, "add_bos": spec.add_bos, "add_eos": spec.add_eos,
            "text_keys": list(spec.text_keys), "text_separator": spec.text_separator,
            "language": spec.language, "language_key": spec.language_key}


def file_fingerprint(path: str) -> dict:
    st = os.stat(path)
    return {"path": path, "format": input_format(path), "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def tokenize_files(inputs: Sequence[str], output_prefix: str, *,
                   text_keys: Sequence[str] = ("text",), text_separator: str = "\n\n",
                   add_bos: bool = True, add_eos: bool = True, language: str | None = None,
                   language_key: str | None = None, workers: int = 1, merge: bool = False,
                   keep_shards: bool = False,
                   max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
                   chunk_bytes: int | None = None, tokenizer_path: str | None = None,
                   task_index: int = 0, num_tasks: int = 1, progress: bool = True,
                   accept_truncated: bool = False, backend: str = DEFAULT_BACKEND) -> dict:
    """Tokenize `inputs` (files or globs) to `output_prefix`; returns its manifest (see
    elama.data.manifest). With `merge`, one dataset at the prefix; without, one shard per input
    under `<prefix>.shards/` and an index manifest at the prefix. `chunk_bytes` (default:
    auto_chunk_bytes) splits .jsonl files into units of work; it does not change the output, nor
    does `backend` (elama.data.backends: fastokens, or tiktoken, the reference).

    With num_tasks > 1 (the tasks of a Slurm array, say, running at once), this call makes only
    the shards of inputs task_index, task_index + num_tasks, ... and returns their counts
    (kind "task"); a final call without them finds every shard done and writes the dataset."""
    _check_args(text_keys, workers, max_reject_fraction, chunk_bytes, task_index, num_tasks)
    check_name(backend)
    start = time.monotonic()
    paths = expand_inputs(inputs)
    chunk_bytes = chunk_bytes or auto_chunk_bytes(paths, workers)
    spec = TextSpec(tuple(text_keys), text_separator, add_bos, add_eos, language, language_key,
                    accept_truncated)
    tokenizer = load_tokenizer(tokenizer_path)
    settings = build_settings(tokenizer, spec)
    fingerprints = [file_fingerprint(p) for p in paths]
    for kind in ["merged" if merge else "index"] if num_tasks == 1 else ["merged", "index"]:
        done = _reusable(output_prefix, settings, fingerprints, kind)
        if done is not None:
            logger.info("%s is up to date with its %d inputs: nothing to do", output_prefix,
                        len(paths))
            _remove_committed_shards(output_prefix, done, keep_shards or num_tasks > 1)
            return done
    shard_dir = output_prefix + ".shards"
    os.makedirs(shard_dir, exist_ok=True)
    task = task_index if num_tasks > 1 else None
    with _exclusive(shard_dir, task):
        shards = [_plan_shard(i, paths[i], fingerprints[i], output_prefix, settings, chunk_bytes,
                              workers > 1) for i in range(task_index, len(paths), num_tasks)]
        _remove_stale(shards, output_prefix if task is None else None)
        _run(shards, tokenizer, spec, settings, workers, progress, backend)
        if task is not None:
            result = {"kind": "task", "task_index": task, "num_tasks": num_tasks,
                      "datasets": [s.prefix for s in shards],
                      "tokenizer_backend": backend_record(backend),
                      **sum_counts(s.manifest["inputs"][0] for s in shards)}
            _log_summary(result, f"{output_prefix} task {task}/{num_tasks}", len(shards),
                         time.monotonic() - start)
            return result
        prefixes = [s.prefix for s in shards]
        concat_rejects(prefixes, [0] * len(prefixes), output_prefix)
        totals = sum_counts(s.manifest["inputs"][0] for s in shards)
        _check_totals(totals, max_reject_fraction, output_prefix, shards)
        manifest = _finish(shards, output_prefix, settings, merge, keep_shards,
                           backend_record(backend))
    _log_summary(manifest, output_prefix, len(paths), time.monotonic() - start)
    return manifest


def _check_args(text_keys, workers, max_reject_fraction, chunk_bytes, task_index,
                num_tasks) -> None:
    problems = []
    if not 0 <= task_index < num_tasks:
        problems.append(f"task_index={task_index}, num_tasks={num_tasks}: need "
                        "0 <= task_index < num_tasks")
    if not text_keys or not all(isinstance(k, str) and k for k in text_keys):
        problems.append(f"text_keys={list(text_keys)!r}: give one or more non-empty keys")
    if workers < 1:
        problems.append(f"workers={workers}: must be >= 1")
    if not 0 <= max_reject_fraction <= 1:
        problems.append(f"max_reject_fraction={max_reject_fraction}: must be in [0, 1]")
    if chunk_bytes is not None and chunk_bytes < 1:
        problems.append(f"chunk_bytes={chunk_bytes}: must be >= 1")
    if problems:
        raise ValueError("invalid tokenization arguments:\n"
                         + "\n".join(f"  - {p}" for p in problems))


def auto_chunk_bytes(paths: Sequence[str], workers: int) -> int:
    """Units small enough to spread over `workers`, large enough that per-unit costs (a part
    written, then concatenated: ~10 ms, measured) stay small."""
    total = sum(os.path.getsize(p) for p in paths if input_format(p) == "jsonl")
    if workers == 1:
        return MAX_CHUNK_BYTES
    return max(MIN_CHUNK_BYTES, min(MAX_CHUNK_BYTES, total // (UNITS_PER_WORKER * workers) + 1))


def _reusable(prefix: str, settings: dict, fingerprints: list[dict], kind: str) -> dict | None:
    """The committed manifest at `prefix` if it was made from exactly these inputs (as they are on
    disk now) with these settings and its dataset files check out; else None (redo it)."""
    m = load_json(manifest_path(prefix))
    if m is None or m.get("kind") != kind or any(m.get(k) != v for k, v in settings.items()):
        return None
    inputs = m.get("inputs", [])
    if len(inputs) != len(fingerprints) or \
            [{k: i.get(k) for k in fp} for i, fp in zip(inputs, fingerprints)] != fingerprints:
        return None
    try:
        return read_manifest(prefix)
    except ValueError:
        return None


@contextlib.contextmanager
def _exclusive(shard_dir: str, task: int | None):
    """flocks: a run owns <prefix>.shards/LOCK, array task i LOCK.task<i> (tasks write disjoint
    shards); a final run also needs every task's lock, i.e. no task still running."""
    paths = [os.path.join(shard_dir, "LOCK" if task is None else f"LOCK.task{task}")]
    if task is None:
        paths += sorted(glob.glob(os.path.join(glob.escape(shard_dir), "LOCK.task*")))
    with contextlib.ExitStack() as stack:
        for path in paths:
            f = stack.enter_context(open(path, "a"))
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"{path} is locked: another tokenization is writing this "
                                   "output prefix; wait for it or choose another prefix") from None
        yield


def _remove_stale(shards: list[_Shard], final_prefix: str | None) -> None:
    """Temporary files the shards' writers left behind (a killed run's), and with a final
    prefix, its temporary files and its old dataset, manifest first: a rerun that fails must
    not leave an outdated .bin/.idx that looks like a dataset."""
    stale = [g for s in shards for g in glob.glob(glob.escape(s.prefix) + ".*.tmp.*")]
    if final_prefix is not None:
        stale += [manifest_path(final_prefix), final_prefix + ".bin", final_prefix + ".idx"]
        for path in dataset_files(final_prefix):
            stale += glob.glob(glob.escape(path) + ".tmp.*")
    for path in stale:
        if os.path.exists(path):
            os.remove(path)


def _remove_committed_shards(prefix: str, manifest: dict, keep: bool) -> None:
    """A merged dataset committed by a run killed before it removed its shards: remove them now
    (they duplicate the dataset on disk), under the lock, as that run would have."""
    shard_dir = prefix + ".shards"
    if manifest["kind"] != "merged" or keep or not os.path.isdir(shard_dir):
        return
    with _exclusive(shard_dir, None):
        shutil.rmtree(shard_dir)
    logger.info("removed %s, left by a run killed after committing %s", shard_dir, prefix)


def _plan_shard(index: int, path: str, fingerprint: dict, output_prefix: str, settings: dict,
                chunk_bytes: int, taper: bool) -> _Shard:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(path).split(".")[0])[:40]
    shard = _Shard(path, os.path.join(output_prefix + ".shards", f"{index:05d}-{stem}"),
                   fingerprint)
    shard.manifest = _reusable(shard.prefix, settings, [fingerprint], "shard")
    if shard.manifest is not None:
        return shard
    shard.units = plan_units(path, chunk_bytes, taper)
    shard.parts = [load_part(shard.part_prefix(k), u, settings, fingerprint)
                   for k, u in enumerate(shard.units)]
    return shard


def _maybe_assemble(shard: _Shard, settings: dict) -> None:
    """Append the parts committed so far (in order) and, once all are, commit the shard."""
    if shard.manifest is not None:
        return
    if shard.assembler is None:
        shard.assembler = Assembler([shard.part_prefix(k) for k in range(len(shard.units))],
                                    shard.prefix, move=True)
    shard.assembler.advance(shard.parts)
    if any(p is None for p in shard.parts):
        return
    entry = {**shard.fingerprint, **sum_counts(shard.parts)}
    manifest = build_manifest("shard", shard.prefix, settings, [entry])
    assemble_shard(shard.assembler, shard.parts, manifest)
    shard.manifest, shard.assembler = manifest, None


# ---- running -------------------------------------------------------------------------------
def _run(shards: list[_Shard], tokenizer, spec, settings, workers: int, progress: bool,
         backend: str) -> None:
    for shard in shards:
        _maybe_assemble(shard, settings)  # joins the parts a killed run committed
    tasks = [Task((i, k), u, s.part_prefix(k), s.fingerprint,
                  u.end - u.start if u.fmt == "jsonl" else s.fingerprint["bytes"] // len(s.units))
             for i, s in enumerate(shards) if s.manifest is None
             for k, u in enumerate(s.units) if s.parts[k] is None]

    def done(key: tuple[int, int], part: dict) -> None:
        shards[key[0]].parts[key[1]] = part
        _maybe_assemble(shards[key[0]], settings)

    if tasks:  # loaded (and probed against tiktoken) only when there is work; workers inherit it
        run_tasks(tasks, workers, (build_encoder(tokenizer, backend), spec, settings), progress,
                  done)


# ---- finishing a run -----------------------------------------------------------------------
def _check_totals(totals: dict, max_fraction: float, prefix: str, shards: list[_Shard]) -> None:
    read, rejected = totals["documents_read"], totals["documents_rejected"]
    if read and rejected / read > max_fraction:
        worst = sorted(shards, key=lambda s: -s.manifest["documents_rejected"])[:3]
        raise TooManyRejectsError(
            f"{rejected} of {read} documents rejected ({rejected / read:.2%}), more than "
            f"max_reject_fraction={max_fraction:.2%}; by reason "
            f"{totals['documents_rejected_by_reason']}; most in "
            + ", ".join(f"{s.path} ({s.manifest['documents_rejected']})" for s in worst)
            + f". Every reject is listed in {prefix}.rejects.jsonl: fix the inputs (or the "
            "--text-key), or raise --max-reject-fraction; committed shards are reused on rerun.")
    if totals["documents_written"] == 0:
        raise ValueError(f"no documents written to {prefix} from {len(shards)} inputs "
                         f"({read} read); see {prefix}.rejects.jsonl")


def _finish(shards: list[_Shard], prefix: str, settings: dict, merge: bool,
            keep_shards: bool, backend: dict) -> dict:
    inputs = [s.manifest["inputs"][0] for s in shards]
    if not merge:
        base = os.path.dirname(prefix) or "."
        datasets = [os.path.relpath(s.prefix, base) for s in shards]
        manifest = build_manifest("index", prefix, settings, inputs, datasets, backend=backend)
        write_json_atomic(manifest_path(prefix), manifest)
        return manifest
    concat_datasets([s.prefix for s in shards], prefix, move=not keep_shards)
    manifest = pin_dataset(build_manifest("merged", prefix, settings, inputs, backend=backend),
                           prefix)
    write_json_atomic(manifest_path(prefix), manifest)  # the commit; then the shards can go
    if not keep_shards:
        shutil.rmtree(prefix + ".shards")
    return manifest


def _log_summary(m: dict, prefix: str, n_inputs: int, elapsed_s: float) -> None:
    elapsed_s = max(elapsed_s, 1e-9)
    logger.info(
        "%s: %d inputs, documents read %d, written %d, rejected %d %s, tokens %d; %.1f s, "
        "%.0f tokens/s, %.1f MB/s", prefix, n_inputs, m["documents_read"],
        m["documents_written"], m["documents_rejected"], m["documents_rejected_by_reason"],
        m["tokens_written"], elapsed_s, m["tokens_written"] / elapsed_s,
        m["bytes_read"] / elapsed_s / 1e6)
