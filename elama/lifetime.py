"""Child processes die with the process that started them, kill -9 included: a rank's
multiprocessing children (dist_checkpointing's spawn-context Manager, its forked writers, the
tokenizer's workers) would otherwise keep running, ~140 MB each, after their rank is gone."""
from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1
_parent = {"pid": 0, "main_thread": False, "applied": False}


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies; exit now if it already has.
    (The signal fires when the parent *thread* that forked us exits: see apply_to_children.)"""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: nothing to ask
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _before_fork() -> None:
    _parent["pid"] = os.getpid()
    _parent["main_thread"] = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    # only children forked by the main thread: a worker thread's child would die with the thread
    if _parent["main_thread"]:
        die_with_parent(_parent["pid"])


def apply_to_children() -> None:
    """From now on, every child this process forks (from its main thread) dies with it. Spawned
    children (a fresh interpreter) call `maybe_die_with_spawning_parent` when they import the main
    module; elama.train does."""
    if not _parent.get("applied"):  # hooks cannot be unregistered: register them once
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _parent["applied"] = True


def maybe_die_with_spawning_parent() -> None:
    """In a multiprocessing spawn child, while it imports the parent's main module as
    __mp_main__ (its parent is the process that spawned it): die with that parent. A no-op in
    any other process."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        die_with_parent(os.getppid())


def exit_process(code: int):
    """sys.exit(code), the heap frozen first: the interpreter's last collections then skip the
    millions of objects torch and megatron-core made at import (measured: 5 s of the 7.6 s a
    4-rank CPU run took between its outcome line and torchrun's return). Exit handlers still run."""
    gc.freeze()
    sys.exit(code)
