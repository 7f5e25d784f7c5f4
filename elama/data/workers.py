"""Running units of tokenization: inline for one worker, else worker processes fed from a queue,
with a progress bar (MB/s, documents/s, tokens/s) fed by both."""
from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import signal
import time
import traceback
from typing import Callable, NamedTuple

from elama.data.readers import InputError, Unit
from elama.data.shards import write_part
from elama.lifetime import die_with_parent


class Task(NamedTuple):
    """One unit for a worker: (shard index, unit index), where to write, input bytes to read."""
    key: tuple[int, int]
    unit: Unit
    prefix: str
    fingerprint: dict
    nbytes: int


def run_tasks(tasks: list[Task], workers: int, state: tuple, progress: bool,
              done: Callable[[tuple[int, int], dict], None]) -> None:
    """Write every task's part; `done(key, part)` as each commits. state: (tokenizer, spec,
    settings)."""
    tasks = sorted(tasks, key=lambda t: -t.nbytes)  # largest first: the last ones are small
    total_bytes = sum(t.nbytes for t in tasks)
    if workers == 1 or len(tasks) <= 1:
        tokenizer, spec, settings = state
        with Progress(total_bytes, progress) as bar:
            for t in tasks:
                done(t.key, write_part(tokenizer, spec, t.unit, t.prefix, settings,
                                       t.fingerprint, bar.update))
    else:
        _run_processes(tasks, min(workers, len(tasks)), state, total_bytes, progress, done)


def _worker(tokenizer, spec, settings, tasks, results, parent_pid: int) -> None:
    """Tokenize tasks until the None sentinel; report ("progress" | "done" | "error", ...)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    die_with_parent(parent_pid)  # kill -9 of the run included: no orphaned work
    for task in iter(tasks.get, None):
        try:
            part = write_part(tokenizer, spec, task.unit, task.prefix, settings, task.fingerprint,
                              lambda d, t, b: results.put(("progress", d, t, b)))
            results.put(("done", task.key, part))
        except InputError as e:  # bad input, not a bug: its message, no traceback
            results.put(("input_error", task.key, str(e)))
            return
        except BaseException:
            results.put(("error", task.key, traceback.format_exc()))
            return


def _run_processes(tasks: list[Task], workers: int, state: tuple, total_bytes: int,
                   progress: bool, done) -> None:
    """Worker processes pulling tasks from a queue. Unlike multiprocessing.Pool, a worker that
    dies (out of memory, killed) fails the run instead of hanging it."""
    # fork: workers inherit the loaded and probed encoder (spawn would load it again: ~3 s per
    # worker for fastokens, measured); the tokenizer path imports no torch, so forking is safe.
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
        with Progress(total_bytes, progress) as bar:
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
                elif kind == "input_error":
                    raise InputError(msg[1])
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


class Progress:
    """tqdm over input bytes (MB/s) with documents/s and tokens/s."""

    def __init__(self, total_bytes: int, enabled: bool):
        from tqdm import tqdm

        self.start, self.docs, self.tokens = time.monotonic(), 0, 0
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000,
                        disable=not enabled, mininterval=0.5, desc="tokenizing")

    def __enter__(self) -> "Progress":
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
