"""Run an elama entry point with one kill -9 point armed, on the real code path:

    ELAMA_KILL_AT=<point>:<n> python -m tests.faults.kill_at -m elama.train <overrides>

kills this process's whole process group (the ranks and every child they started: a node lost)
the n-th time <point> is reached in this process. Points (see POINTS): a train step about to run,
a dist_checkpointing save/load about to start, an os.replace into a checkpoint directory or the
tracker (before or after), a checkpoint directory about to be pruned. Only rank 0 renames and
prunes, so those points fire there. This module imports nothing heavy at module level: the
spawn-context Manager of checkpointing re-imports it as __mp_main__.
"""
from __future__ import annotations

import os
import runpy
import signal
import sys

TRACKER = "latest_checkpointed_iteration.txt"
POINTS = ("step", "dcp_save", "dcp_load", "replace_iter", "after_replace_iter", "replace_tracker",
          "after_replace_tracker", "prune")
_hits: dict[str, int] = {}


def _kill_group() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def hit(point: str) -> None:
    """Count `point`; at the armed count, kill -9 the process group."""
    armed, _, count = os.environ.get("ELAMA_KILL_AT", "").partition(":")
    if point != armed:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] == int(count or 1):
        print(f"kill_at: SIGKILL at {point} #{_hits[point]}", file=sys.stderr, flush=True)
        _kill_group()


def _wrap(owner, name: str, before, after=None) -> None:
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        before(*args, **kwargs)
        result = real(*args, **kwargs)
        if after is not None:
            after(*args, **kwargs)
        return result

    setattr(owner, name, wrapper)


def _dst_point(dst) -> str | None:
    base = os.path.basename(os.fspath(dst))
    if base == TRACKER:
        return "tracker"
    if base.startswith("iter_") and not base.endswith(".tmp"):
        return "iter"
    return None


def arm() -> None:
    """Install the hooks (in a rank, before elama.train runs)."""
    import shutil

    from megatron.core import dist_checkpointing

    import elama.trainer

    _wrap(elama.trainer, "train_step", lambda *a, **k: hit("step"))
    _wrap(dist_checkpointing, "save", lambda *a, **k: hit("dcp_save"))
    _wrap(dist_checkpointing, "load", lambda *a, **k: hit("dcp_load"))

    def before_replace(src, dst, *a, **k):
        if (kind := _dst_point(dst)) is not None:
            hit(f"replace_{kind}")

    def after_replace(src, dst, *a, **k):
        if (kind := _dst_point(dst)) is not None:
            hit(f"after_replace_{kind}")

    _wrap(os, "replace", before_replace, after_replace)

    def before_rmtree(path, *a, **k):
        if os.path.basename(os.fspath(path)).startswith("iter_"):
            hit("prune")

    _wrap(shutil, "rmtree", before_rmtree)


if __name__ == "__mp_main__":  # the rank's spawned Manager: die with the rank
    from elama.lifetime import maybe_die_with_spawning_parent

    maybe_die_with_spawning_parent()

if __name__ == "__main__":
    if sys.argv[1:2] != ["-m"] or len(sys.argv) < 3:
        sys.exit("usage: python -m tests.faults.kill_at -m MODULE ARGS...")
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    arm()
    runpy.run_module(module, run_name="__main__", alter_sys=True)
