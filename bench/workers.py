"""Timed runs in fresh worker processes, under the same conditions for a floor and for what it is
the floor of: a worker loads its modules, says it is ready and waits; only then does the parent
clear the previous run's output and sync, and tell it to go.

Why the order matters: on a VM whose host backs guest memory lazily and takes back the pages the
guest frees (this machine: Firecracker with free page reporting, which reports free pages ~2 s
after they are freed), a write into the page cache that lands on a page taken back costs a host
page fault. Measured here, 2 GB of plain writes took 0.56 s into pages just freed and 5-6 s after
20 s idle. A worker that needs seconds to import torch and megatron used to start after the
previous output was deleted, so it found those pages handed back, while a plain-copy floor (50 ms
to start) found them still hot: the floor ran at memory speed and the converter at the host's
page-fault speed, which is the machine, not the converter.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

READY, GO = "ready", "go"


def wait_for_go() -> None:
    """Worker side: call after the worker's imports, right before its timer starts."""
    print(READY, flush=True)
    line = sys.stdin.readline().strip()
    if line != GO:
        raise SystemExit(f"bench worker: expected {GO!r} from the parent on stdin, got {line!r}")


def run(argv: list[str], before: Callable[[], None], env: dict | None = None) -> dict:
    """Start the worker argv, wait until it is ready, call before() (clear and sync), tell it to
    go, and return the JSON object on the last line of its stdout."""
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: warnings cannot block it
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                text=True, env=env)
        try:
            ready = proc.stdout.readline().strip()
            if ready == READY:
                before()
                proc.stdin.write(GO + "\n")
                proc.stdin.flush()
            out, _ = proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if ready != READY or proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"bench worker {' '.join(argv[1:])} failed (exit {proc.returncode}, "
                             f"first line {ready!r}):\n{err.read()[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


def rss_bytes(field: str) -> int:
    """Worker side: VmRSS (now) or VmHWM (peak) of this process, in bytes. Not getrusage's
    ru_maxrss: Linux carries that across exec from the parent, so a child of a big process
    starts with the parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) * 1024


def raw_copy(read: list, copy: list, out) -> float:
    """The I/O floor, worker side: read every file in `read`, read and write every file in `copy`
    into the directory `out` with plain unbuffered file I/O through one 64 MB buffer (its pages
    touched before the timer), and return the seconds the I/O took. Unbuffered with a large
    buffer because it was the fastest plain copy measured here (a buffered 16 MB copy ran up to
    3x slower on the same bytes): a floor must be the cheapest way to move those bytes."""
    out.mkdir()
    buf = memoryview(bytearray(b"\x01") * (64 << 20))
    wait_for_go()
    start = time.perf_counter()
    for path in [*read, *copy]:
        dst = open(out / path.name, "wb", buffering=0) if path in copy else None
        with open(path, "rb", buffering=0) as src:
            while n := src.readinto(buf):
                if dst is not None:
                    _write_all(dst, buf[:n])
        if dst is not None:
            dst.close()
    return time.perf_counter() - start


def _write_all(dst, view: memoryview) -> None:
    """An unbuffered write may write less than asked: loop until every byte is out."""
    while view:
        view = view[dst.write(view):]
