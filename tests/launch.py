"""Start `python -m elama.train` as N rank processes, the way srun starts one task per rank
(RANK/WORLD_SIZE/MASTER_* in the environment), so tests can signal and kill -9 real ranks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.spawn import free_port

REPO = Path(__file__).resolve().parents[1]


class Ranks:
    def __init__(self, world: int, argv: list[str], log_dir: Path, env: dict | None = None):
        port = free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.logs = [log_dir / f"rank{r}.log" for r in range(world)]
        self.procs = []
        for rank in range(world):
            rank_env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                        "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                        "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
            with open(self.logs[rank], "ab") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "elama.train", *argv], cwd=REPO, env=rank_env,
                    stdout=log, stderr=subprocess.STDOUT))

    def wait(self, timeout_s: float = 600) -> list[int]:
        deadline = time.monotonic() + timeout_s
        try:
            return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in self.procs]
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"ranks still running after {timeout_s}s; log:\n{self.log(0)}")

    def signal(self, sig: int) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        for p in self.procs:
            p.wait()

    def log(self, rank: int = 0) -> str:
        return self.logs[rank].read_text(errors="replace")[-6000:]


def train(world: int, argv: list[str], log_dir: Path, timeout_s: float = 600) -> list[int]:
    """Run elama.train on `world` ranks to the end; their exit codes."""
    return Ranks(world, argv, log_dir).wait(timeout_s)


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def metrics(run_dir: Path) -> dict[int, dict]:
    """Training records by step; a step logged twice (redone after a kill) keeps the last."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record
    return out
