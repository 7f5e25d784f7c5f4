"""Processes the test session left behind: make pytest their subreaper (Linux), then list, kill and
reap whatever is still a child of it at the end, except its own long-lived helpers."""
from __future__ import annotations

import ctypes
import os
import signal
import time

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphans of this process's descendants are re-parented to it instead of to init."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0
    except (OSError, AttributeError):
        return False


def live_processes(*, pgid: int | None = None, ppid: int | None = None) -> dict[int, str]:
    """{pid: command line} of live (non-zombie) processes in process group pgid and/or with
    parent ppid, from /proc."""
    out = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        state, parent, group = stat[stat.rindex(")") + 2:].split()[:3]  # after "pid (comm) "
        if state != "Z" and (pgid is None or int(group) == pgid) and \
                (ppid is None or int(parent) == ppid):
            out[int(entry)] = cmd[:200]
    return out


def _own_helpers() -> set[int]:
    """This process's own multiprocessing children (a Manager that an in-process checkpoint save
    started) and resource tracker: multiprocessing ends them when this process exits. Orphans
    re-parented here are in neither."""
    import multiprocessing
    from multiprocessing import resource_tracker

    pids = {p.pid for p in multiprocessing.active_children()}
    pid = getattr(resource_tracker._resource_tracker, "_pid", None)
    return pids | ({pid} if pid else set())


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def end_survivors(grace_s: float) -> list[tuple[int, str]]:
    """Children (orphans included) still alive after grace_s: killed, reaped and returned."""
    deadline = time.monotonic() + grace_s
    while True:
        _reap()
        helpers = _own_helpers()
        alive = {p: c for p, c in live_processes(ppid=os.getpid()).items() if p not in helpers}
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.2)
    _reap()
    return sorted(alive.items())
