"""No process outlives what started it: a rank killed with kill -9 (alone, not its group) takes
its multiprocessing children along (parent-death signal), and the suite fails when a test leaves
a process behind (tests/conftest.py's session fixture)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from elama import checkpoint
from tests.faults.conftest import train_argv
from tests.faults.ranks import REPO, RankGroup, wait_gone
from tests.launch import wait_for
from tests.survivors import live_processes

pytestmark = pytest.mark.distributed


def _descendants(pid: int) -> dict[int, str]:
    found, frontier = {}, [pid]
    while frontier:
        children = live_processes(ppid=frontier.pop())
        found.update(children)
        frontier += list(children)
    return found


def test_a_rank_killed_alone_takes_its_children_along(tmp_path):
    """The real entry point (python -m elama.train), one rank, killed right after a save: its
    checkpointing Manager (spawned) and resource tracker must not keep running."""
    run_dir = tmp_path / "run"
    ranks = RankGroup(1, train_argv(run_dir, "train.train_steps=400", "checkpoint.save_interval=1"),
                      tmp_path / "log.txt")
    rank = ranks.pids[0]
    try:
        wait_for(lambda: checkpoint.read_tracker(run_dir) is not None, 300, "the first checkpoint")
        children = _descendants(rank)
        assert any("spawn_main" in cmd for cmd in children.values()), children  # the Manager
        os.kill(rank, signal.SIGKILL)
        assert ranks.wait(60) == [-signal.SIGKILL]
        assert not wait_gone(children, 15), "children outlived their rank"
    finally:
        ranks.kill()


def test_the_suite_fails_when_a_test_leaves_a_process_behind(tmp_path):
    test = tmp_path / "test_leaky.py"
    test.write_text(textwrap.dedent("""
        import subprocess, sys

        def test_leaves_an_orphan():
            # a grandchild whose parent exits at once: an orphan, as a killed rank leaves them
            subprocess.run([sys.executable, "-c",
                            "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
                            "'import time; time.sleep(120)'])"], check=True)
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(test)], cwd=REPO, capture_output=True, text=True,
        timeout=120, env={**os.environ, "ELAMA_SURVIVOR_GRACE_S": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "1 passed" in out and "test processes outlived the tests (killed now)" in out, out
    assert "time.sleep(120)" in out
