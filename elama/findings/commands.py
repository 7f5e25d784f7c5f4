"""Running elama's own commands for the findings study as subprocesses, two at a time on 2 cores:
each command's output goes to a log file in the run directory, its wall and CPU seconds are
recorded, and a failure stops the study naming the command and its log."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class StudyError(RuntimeError):
    """A step of the study failed; the message names the command and where its output is."""


@dataclass
class Command:
    name: str
    """Label, and the log's file name (logs/<name>.log)."""
    argv: list[str]
    threads: int = 1
    """OMP threads per process."""
    processes: int = 1
    """Processes it starts (torchrun --nproc-per-node), for the cores it keeps busy."""


@dataclass
class StageTimes:
    """Wall and CPU seconds per stage, and how many cores the stage can keep busy: CPU seconds
    over those cores estimates the wall time on an idle machine (this one is shared)."""
    stages: dict = field(default_factory=dict)

    def add(self, stage: str, wall_s: float, cpu_s: float, cores: int) -> None:
        wall, cpu, _ = self.stages.get(stage, (0.0, 0.0, cores))
        self.stages[stage] = (wall + wall_s, cpu + cpu_s, cores)

    def totals(self) -> tuple[float, float]:
        return (sum(s[0] for s in self.stages.values()), sum(s[1] for s in self.stages.values()))

    def idle_estimate_s(self) -> float:
        """Sum over stages of CPU s / cores used: the wall time on an idle machine, no faster
        than the cores allow."""
        return sum(cpu / max(1, cores) for _, cpu, cores in self.stages.values())


def _children_cpu_s() -> float:
    t = os.times()
    return t.children_user + t.children_system


def self_cpu_s() -> float:
    """CPU seconds of this process (all its threads)."""
    t = os.times()
    return t.user + t.system


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def torchrun(nproc: int, *args: str) -> list[str]:
    # --standalone: a free rendezvous port per run, so two runs can share the machine.
    return python("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                  *args)


def run_stage(stage: str, commands: list[Command], log_dir: Path, times: StageTimes,
              parallel: int = 2, echo=print) -> None:
    """Run commands, at most `parallel` at once; raise StudyError on the first failure (after the
    running ones finish, so no process is left behind)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), _children_cpu_s()
    pending, running, failed = list(commands), [], []
    try:
        _run_all(pending, running, failed, log_dir, parallel, echo)
    finally:
        for _, proc, log in running:  # interrupted: no command outlives the study
            proc.terminate()
            proc.wait()
            log.close()
    cores = min(2, max(c.threads * c.processes for c in commands) * min(parallel, len(commands)))
    times.add(stage, time.perf_counter() - wall0, _children_cpu_s() - cpu0, cores)
    if failed:
        cmd, rc = failed[0]
        tail = (log_dir / f"{cmd.name}.log").read_text(errors="replace").splitlines()[-15:]
        raise StudyError(f"{stage}: '{cmd.name}' exited with {rc}; its output is in "
                         f"{log_dir / (cmd.name + '.log')}, ending:\n    " + "\n    ".join(tail))


def _run_all(pending: list, running: list, failed: list, log_dir: Path, parallel: int,
             echo) -> None:
    """Start pending commands as slots free up; after a failure start no more, and return when
    the running ones have finished."""
    while pending or running:
        while pending and len(running) < parallel and not failed:
            cmd = pending.pop(0)
            echo(f"  $ {' '.join(cmd.argv)}")
            log = (log_dir / f"{cmd.name}.log").open("w")
            env = {**os.environ, "OMP_NUM_THREADS": str(cmd.threads),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                               os.environ.get("PYTHONPATH")]))}
            proc = subprocess.Popen(cmd.argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    env=env)
            running.append((cmd, proc, log))
        if failed and not running:
            break
        time.sleep(0.2)
        for item in list(running):
            cmd, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                if proc.returncode != 0:
                    failed.append((cmd, proc.returncode))
