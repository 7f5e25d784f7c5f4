"""Rank processes for the fault tests: `python -m elama.train` (or under tests.faults.kill_at) on N
ranks in one new process group, the way a node holds them, so one kill -9 can take them all (and
their children) down; plus what the tests read back: live processes, weights."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.spawn import free_port
from tests.survivors import live_processes

REPO = Path(__file__).resolve().parents[2]


class Zygote:
    """tests.faults.zygote, started once: forks ranks with everything already imported."""

    def __init__(self, log: Path):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.zygote"], cwd=REPO, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "ab"),
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        assert "ready" in self._reply(300), f"the zygote did not start: {log.read_text()[-3000:]}"

    def _reply(self, timeout_s: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            raise TimeoutError(f"no reply from the zygote within {timeout_s}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote exited ({self.proc.poll()})")
        return json.loads(line)

    def request(self, timeout_s: float = 60, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._reply(timeout_s)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class RankGroup:
    """N ranks of `python -m elama.train` (or forked by a Zygote) in one new process group."""

    def __init__(self, world: int, argv: list[str], log: Path, *, kill_at: str | None = None,
                 zygote: Zygote | None = None):
        port, env = free_port(), {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                                  "ELAMA_KILL_AT": kill_at or ""}
        cmd = [sys.executable, "-m", *(["tests.faults.kill_at", "-m"] if kill_at else []),
               "elama.train", *argv]
        self.log, self.zygote, self.pids, self.procs = log, zygote, [], []
        log.parent.mkdir(parents=True, exist_ok=True)
        for rank in range(world):
            rank_env = {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                        "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)}
            group = self.pids[0] if self.pids else 0  # rank 0 leads a new group, the others join
            try:
                if zygote is not None:
                    self.pids.append(zygote.request(start={"argv": argv, "env": rank_env,
                                                           "log": str(log), "pgid": group})["pid"])
                    continue
                with open(log, "ab") as out:
                    self.procs.append(subprocess.Popen(
                        cmd, cwd=REPO, env={**os.environ, **rank_env}, stdout=out,
                        stderr=subprocess.STDOUT, process_group=group))
                self.pids.append(self.procs[-1].pid)
            except (OSError, RuntimeError, TimeoutError):
                self.kill()
                raise
        self.pgid = self.pids[0]

    def wait(self, timeout_s: float = 300) -> list[int]:
        deadline = time.monotonic() + timeout_s
        codes = []
        try:
            for i, pid in enumerate(self.pids):
                left = max(1.0, deadline - time.monotonic())
                codes.append(self.zygote.request(wait=pid, timeout_s=left)["status"]
                             if self.zygote else self.procs[i].wait(timeout=left))
        except (subprocess.TimeoutExpired, TimeoutError):
            stuck = live_processes(pgid=self.pgid)
            try:  # zygote ranks dump their stacks on SIGUSR2 (faulthandler)
                os.killpg(self.pgid, signal.SIGUSR2)
                time.sleep(1)
            except ProcessLookupError:
                pass
            self.kill()
            raise AssertionError(f"ranks still running after {timeout_s}s: {stuck}\n{self.tail()}")
        return codes

    def kill(self) -> None:
        try:
            os.killpg(self.pids[0], signal.SIGKILL)
        except (ProcessLookupError, IndexError):
            pass
        if self.zygote is None:
            for p in self.procs:
                p.wait()

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def wait_gone(pids, timeout_s: float) -> dict[int, str]:
    """Wait until none of pids is a live process; the ones still alive at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = {p: c for p, c in live_processes().items() if p in set(pids)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def weights(iter_dir: Path) -> dict:
    """Full tensors of a saved model, read in this (single) process."""
    import torch.distributed as dist
    from megatron.core.dist_checkpointing import load_plain_tensors

    from elama.parallel import setup

    if not dist.is_initialized():
        setup.init_single_process()
    return load_plain_tensors(str(iter_dir / "model"))
