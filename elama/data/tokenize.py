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
import multiprocessing
import os
import queue as queue_module
import re
import shutil
import signal
import time
import traceback
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

from elama.data.manifest import (TOKEN_DTYPE, build_manifest, load_json, manifest_path,
                                 read_manifest, sum_counts, write_json_atomic)
from elama.data.readers import Unit, expand_inputs, input_format, plan_units
from elama.data.shards import (TextSpec, assemble_shard, concat_datasets, concat_rejects,
                               dataset_files, load_part, write_part)
from elama.tokenizer import Llama3Tokenizer, load_tokenizer

logger = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 256 << 20  # of .jsonl per unit: a kill loses at most this much work
MIN_CHUNK_BYTES = 4 << 20
UNITS_PER_WORKER = 8  # the last unit to finish leaves the others idle for ~1/8 of a share
DEFAULT_MAX_REJECT_FRACTION = 0.01


class TooManyRejectsError(RuntimeError):
    """The run rejected more than max_reject_fraction of the documents it read."""


class _Task(NamedTuple):
    """One unit for a worker: (shard index, unit index), where to write, input bytes to read."""
    key: tuple[int, int]
    unit: Unit
    prefix: str
    fingerprint: dict
    nbytes: int


@dataclass
class _Shard:
    """One input file's shard and the parts it is assembled from."""
    path: str
    prefix: str
    fingerprint: dict
    units: list[Unit] = field(default_factory=list)
    parts: list[dict | None] = field(default_factory=list)
    manifest: dict | None = None

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
                   progress: bool = True) -> dict:
    """Tokenize `inputs` (files or globs) to `output_prefix`; returns its manifest (see
    elama.data.manifest). With `merge`, one dataset at the prefix; without, one shard per input
    under `<prefix>.shards/` and an index manifest at the prefix. `chunk_bytes` (default:
    auto_chunk_bytes) splits .jsonl files into units of work; it does not change the output."""
    _check_args(text_keys, workers, max_reject_fraction, chunk_bytes)
    start = time.monotonic()
    paths = expand_inputs(inputs)
    chunk_bytes = chunk_bytes or auto_chunk_bytes(paths, workers)
    spec = TextSpec(tuple(text_keys), text_separator, add_bos, add_eos, language, language_key)
    tokenizer = load_tokenizer(tokenizer_path)
    settings = build_settings(tokenizer, spec)
    fingerprints = [file_fingerprint(p) for p in paths]
    done = _reusable(output_prefix, settings, fingerprints, "merged" if merge else "index")
    if done is not None:
        logger.info("%s is up to date with its %d inputs: nothing to do", output_prefix, len(paths))
        return done
    shard_dir = output_prefix + ".shards"
    os.makedirs(shard_dir, exist_ok=True)
    with _exclusive(shard_dir):
        _remove_stale(output_prefix, shard_dir)
        shards = [_plan_shard(i, p, fp, output_prefix, settings, chunk_bytes)
                  for i, (p, fp) in enumerate(zip(paths, fingerprints))]
        _run(shards, tokenizer, spec, settings, workers, progress)
        prefixes = [s.prefix for s in shards]
        concat_rejects(prefixes, [0] * len(prefixes), output_prefix)
        totals = sum_counts(s.manifest["inputs"][0] for s in shards)
        _check_totals(totals, max_reject_fraction, output_prefix, shards)
        manifest = _finish(shards, output_prefix, settings, merge, keep_shards)
    _log_summary(manifest, output_prefix, len(paths), time.monotonic() - start)
    return manifest


def _check_args(text_keys, workers, max_reject_fraction, chunk_bytes) -> None:
    problems = []
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
    """Units small enough that `workers` stay busy to the end, large enough that per-unit costs
    (a part written, then concatenated: ~10 ms, measured) stay small."""
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
def _exclusive(shard_dir: str):
    """An flock on <prefix>.shards/LOCK: two runs writing one prefix would corrupt each other."""
    path = os.path.join(shard_dir, "LOCK")
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{path} is locked: another tokenization is writing this output "
                               "prefix; wait for it or choose another prefix") from None
        yield


def _remove_stale(prefix: str, shard_dir: str) -> None:
    """An old final manifest (about to be outdated) and every leftover temporary file."""
    stale = [manifest_path(prefix)]
    for path in dataset_files(prefix):
        stale += glob.glob(glob.escape(path) + ".tmp.*")
    stale += glob.glob(os.path.join(glob.escape(shard_dir), "*.tmp.*"))
    for path in stale:
        if os.path.exists(path):
            os.remove(path)


def _plan_shard(index: int, path: str, fingerprint: dict, output_prefix: str, settings: dict,
                chunk_bytes: int) -> _Shard:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(path).split(".")[0])[:40]
    shard = _Shard(path, os.path.join(output_prefix + ".shards", f"{index:05d}-{stem}"),
                   fingerprint)
    shard.manifest = _reusable(shard.prefix, settings, [fingerprint], "shard")
    if shard.manifest is not None:
        return shard
    shard.units = plan_units(path, chunk_bytes)
    shard.parts = [load_part(shard.part_prefix(k), u, settings, fingerprint)
                   for k, u in enumerate(shard.units)]
    return shard


def _maybe_assemble(shard: _Shard, settings: dict) -> None:
    if shard.manifest is not None or any(p is None for p in shard.parts):
        return
    entry = {**shard.fingerprint, **sum_counts(shard.parts)}
    manifest = build_manifest("shard", shard.prefix, settings, [entry])
    assemble_shard([shard.part_prefix(k) for k in range(len(shard.units))], shard.parts,
                   shard.prefix, manifest)
    shard.manifest = manifest


# ---- running units: inline for one worker, worker processes otherwise ----------------------
def _worker(tokenizer, spec, settings, tasks, results, parent_pid: int) -> None:
    """Tokenize tasks until the None sentinel; report ("progress" | "done" | "error", ...)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:  # die with the parent (kill -9 included) instead of finishing orphaned work
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        return
    for task in iter(tasks.get, None):
        try:
            part = write_part(tokenizer, spec, task.unit, task.prefix, settings, task.fingerprint,
                              lambda d, t, b: results.put(("progress", d, t, b)))
            results.put(("done", task.key, part))
        except BaseException:
            results.put(("error", task.key, traceback.format_exc()))
            return


def _run(shards: list[_Shard], tokenizer, spec, settings, workers: int, progress: bool) -> None:
    for shard in shards:
        _maybe_assemble(shard, settings)  # every part was committed before a kill
    tasks = [_Task((i, k), u, s.part_prefix(k), s.fingerprint,
                   u.end - u.start if u.fmt == "jsonl" else s.fingerprint["bytes"] // len(s.units))
             for i, s in enumerate(shards) if s.manifest is None
             for k, u in enumerate(s.units) if s.parts[k] is None]
    tasks.sort(key=lambda t: -t.nbytes)  # largest first: the last unit running alone is small
    total_bytes = sum(t.nbytes for t in tasks)

    def done(key: tuple[int, int], part: dict) -> None:
        shards[key[0]].parts[key[1]] = part
        _maybe_assemble(shards[key[0]], settings)

    if workers == 1 or len(tasks) <= 1:
        with _Progress(total_bytes, progress) as bar:
            for t in tasks:
                done(t.key, write_part(tokenizer, spec, t.unit, t.prefix, settings,
                                       t.fingerprint, bar.update))
    else:
        _run_workers(tasks, min(workers, len(tasks)), (tokenizer, spec, settings), total_bytes,
                     progress, done)


def _run_workers(tasks: list[_Task], workers: int, state: tuple, total_bytes: int,
                 progress: bool, done) -> None:
    """Worker processes pulling tasks from a queue. Unlike multiprocessing.Pool, a worker that
    dies (out of memory, killed) fails the run instead of hanging it."""
    # fork: workers inherit the loaded tokenizer and imported megatron-core (spawn re-imports
    # megatron-core, ~2.5 s per worker, measured); they never touch torch, so forking is safe.
    # They fork before the progress bar starts its monitor thread.
    ctx = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    task_queue, results = ctx.Queue(), ctx.Queue()
    for t in [*tasks, *[None] * workers]:
        task_queue.put(t)
    procs = [ctx.Process(target=_worker, args=(*state, task_queue, results, os.getpid()),
                         daemon=True) for _ in range(workers)]
    for p in procs:
        p.start()
    by_key, finished = {t.key: t for t in tasks}, False
    try:
        with _Progress(total_bytes, progress) as bar:
            remaining = len(tasks)
            while remaining:
                try:
                    kind, *msg = results.get(timeout=0.5)
                except queue_module.Empty:
                    dead = [p for p in procs if p.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(f"worker pid {dead[0].pid} died (exit code "
                                           f"{dead[0].exitcode}; out of memory?); committed parts "
                                           "are reused on rerun") from None
                    continue
                if kind == "progress":
                    bar.update(*msg)
                elif kind == "error":
                    unit = by_key[msg[0]].unit
                    raise RuntimeError(f"tokenizing {unit.path} (unit {unit.index}) failed:\n"
                                       f"{msg[1]}")
                else:
                    done(*msg)
                    remaining -= 1
        finished = True
    finally:
        for p in procs:
            p.join(timeout=5 if finished else 0)  # on success they exit at their sentinel
            if p.is_alive():
                p.kill()
                p.join()


class _Progress:
    """tqdm over input bytes (MB/s) with documents/s and tokens/s."""

    def __init__(self, total_bytes: int, enabled: bool):
        from tqdm import tqdm

        self.start, self.docs, self.tokens = time.monotonic(), 0, 0
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000,
                        disable=not enabled, mininterval=0.5, desc="tokenizing")

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def update(self, docs: int, tokens: int, nbytes: int) -> None:
        self.docs += docs
        self.tokens += tokens
        elapsed = max(time.monotonic() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.docs / elapsed:,.0f} docs/s, "
                                 f"{self.tokens / elapsed:,.0f} tokens/s", refresh=False)
        self.bar.update(nbytes)


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
            keep_shards: bool) -> dict:
    inputs = [s.manifest["inputs"][0] for s in shards]
    if not merge:
        base = os.path.dirname(prefix) or "."
        datasets = [os.path.relpath(s.prefix, base) for s in shards]
        manifest = build_manifest("index", prefix, settings, inputs, datasets)
        write_json_atomic(manifest_path(prefix), manifest)
        return manifest
    concat_datasets([s.prefix for s in shards], prefix, move=not keep_shards)
    manifest = build_manifest("merged", prefix, settings, inputs)
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
