"""Run a function on N real processes (spawn start method, gloo, a free loopback port).

`run_distributed(fn, world_size, *args)` returns each rank's return value, in rank order. The
function must be importable at module level (spawn pickles it by name). A failing rank raises in
the parent with that rank's traceback; a hung group is killed after `timeout_s`. Each rank leads a
process group that is ended at the finish, so nothing a rank started outlives it.
"""
from __future__ import annotations

import os
import pickle
import queue
import signal
import socket
import traceback
from typing import Any, Callable

import torch.multiprocessing as mp


def free_port() -> int:
    """A port the OS just handed out on loopback (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world_size: int, port: int, fn: Callable, args: tuple, results) -> None:
    os.setpgid(0, 0)  # lead a process group: the parent ends it, with any child started here
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
    )
    import torch

    torch.set_num_threads(1)  # 2 cores shared by up to 4 ranks
    try:
        # Plain pickle bytes: torch's queue pickler would share tensor storage through file
        # descriptors that vanish when this process exits before the parent reads them.
        results.put((rank, True, pickle.dumps(fn(*args))))
    except BaseException:  # report every failure, including SystemExit, to the parent
        results.put((rank, False, traceback.format_exc()))
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _end_group(pgid: int) -> None:
    """kill -9 what a rank left in its process group (a checkpointing Manager, writers): a
    killed or failed rank's children would otherwise outlive the test."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout_s: float = 600) -> list:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_child, args=(r, world_size, port, fn, args, results))
             for r in range(world_size)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    errors = []
    try:
        while len(out) + len(errors) < world_size:
            try:
                rank, ok, value = results.get(timeout=timeout_s)
            except queue.Empty:
                raise TimeoutError(f"{fn.__name__} on {world_size} ranks: no result within "
                                   f"{timeout_s}s from ranks {sorted(set(range(world_size)) - set(out))}")
            if ok:
                out[rank] = pickle.loads(value)
            else:
                errors.append(f"--- rank {rank} ---\n{value}")
                break  # peers of a failed rank usually block in a collective: stop them
    finally:
        for p in procs:
            p.join(timeout=30 if not errors else 1)
            if p.is_alive():
                p.kill()
                p.join()
            _end_group(p.pid)
    if errors:
        raise RuntimeError(f"{fn.__name__} failed on {world_size} ranks:\n" + "\n".join(errors))
    return [out[r] for r in range(world_size)]
