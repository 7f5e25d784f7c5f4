"""The sbatch scripts' fault handling, run by bash with stand-ins for srun, scontrol and python
(no Slurm needed): the ranks' srun ends every rank when one dies (--kill-on-bad-exit=1), a
preempted step still requeues (launch/rank.sh turns 75 into 0 plus a marker), and
preprocess.sbatch's --workers default yields to the user's."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.faults.ranks import REPO

FAKE_SRUN = """#!/bin/bash
echo "srun $*" >> "$FAKE_LOG"
while [[ "$1" == --* ]]; do shift; done  # srun's own options; then the task's command
"$@"
"""
FAKE_SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$FAKE_LOG"
[[ "$1" == show ]] && echo localhost
exit 0
"""
FAKE_PYTHON = """#!/bin/bash
echo "python $*" >> "$FAKE_LOG"
case "$*" in *--check*) exit 0 ;; esac
exit "$FAKE_RC"
"""


@pytest.fixture
def fake_bin(tmp_path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("python", FAKE_PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    return bin_dir


def _sbatch(script: str, fake_bin: Path, tmp_path: Path, *args: str, rc: int = 0,
            **env: str) -> tuple[int, str]:
    log = tmp_path / "calls.txt"
    environ = {"PATH": f"{fake_bin}:{os.environ['PATH']}", "FAKE_LOG": str(log),
               "FAKE_RC": str(rc), "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_ID": "42",
               "SLURM_JOB_NAME": "t", "SLURM_JOB_NODELIST": "localhost", "SLURM_NTASKS": "2",
               "HOME": str(tmp_path), **env}
    proc = subprocess.run(["bash", str(REPO / "launch" / script), *args], cwd=tmp_path,
                          env=environ, capture_output=True, text=True, timeout=60)
    return proc.returncode, (log.read_text() if log.exists() else "") + proc.stdout + proc.stderr


@pytest.mark.parametrize("rank_rc,job_rc,requeued", [(0, 0, False), (75, 75, True),
                                                     (1, 1, False)])
def test_train_ranks_die_together_and_preemption_still_requeues(fake_bin, tmp_path, rank_rc,
                                                                job_rc, requeued):
    run_dir = tmp_path / "run"
    code, calls = _sbatch("train.sbatch", fake_bin, tmp_path, "experiment=cpt_tiny_cpu",
                          rc=rank_rc, ELAMA_RUN_DIR=str(run_dir))
    assert code == job_rc, calls
    [ranks] = [c for c in calls.splitlines() if c.startswith("srun") and "rank.sh" in c]
    assert "--kill-on-bad-exit=1" in ranks.split()
    assert ("scontrol requeue 42" in calls) == requeued, calls
    assert f"ranks exited with {job_rc}" in calls


def test_preprocess_workers_default_yields_to_the_users(fake_bin, tmp_path):
    from tools.preprocess_data import build_parser

    args = ["--input", "a.jsonl", "--output-prefix", "ds"]
    for given, expected in (([], 8), (["--workers", "3"], 3), (["--workers=5"], 5)):
        (tmp_path / str(expected)).mkdir()
        code, calls = _sbatch("preprocess.sbatch", fake_bin, tmp_path / str(expected), *args,
                              *given, SLURM_CPUS_PER_TASK="8")
        assert code == 0, calls
        line = [c for c in calls.splitlines() if c.startswith("python ")][-1]
        argv = line.split()[3:]  # after "python -m elama_tools.preprocess_data"
        assert build_parser().parse_args(argv).workers == expected, line
