"""`python -m elama.train ...` as one plain process (no launcher, no RANK/MASTER_* in the
environment) trains; the outcome of a done, a preempted and a resumed run is rank 0's last line
and <run_dir>/outcome.json, with the exit code a launcher would lose."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.launch import REPO, metrics, wait_for

pytestmark = pytest.mark.distributed
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
SMALL = ["data=synthetic", "model.vocab_size=512", "data.seq_len_tokens=16",
         "train.global_batch_size=2", "train.micro_batch_size=1", "checkpoint.async_save=false"]


def _start(run_dir, *overrides) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "elama.train", *SMALL,
                             f"checkpoint.run_dir={run_dir}", *overrides], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout_s: float = 300) -> tuple[int, list[str]]:
    out, _ = proc.communicate(timeout=timeout_s)
    return proc.returncode, out.strip().splitlines()


def _outcome(run_dir) -> dict:
    return json.loads((run_dir / "outcome.json").read_text())


def test_single_process_trains_two_steps_and_states_the_outcome(tmp_path):
    run_dir = tmp_path / "run"
    code, lines = _finish(_start(run_dir, "train.train_steps=2"))
    assert code == 0, "\n".join(lines[-30:])
    assert lines[-1].endswith("elama.train] done at step 2")
    assert "Traceback" not in "\n".join(lines) and "Warning" not in "\n".join(lines)
    assert sorted(metrics(run_dir)) == [1, 2]
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    outcome = _outcome(run_dir)
    assert (outcome["kind"], outcome["step"], outcome["exit_code"]) == ("done", 2, 0)
    assert outcome["checkpoint"] == "iter_0000002" and outcome["world_size"] == 1
    assert outcome["line"] == "done at step 2"


def test_preempted_then_resumed_run_records_each_outcome(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "train.train_steps=100000")
    wait_for(lambda: (run_dir / "metrics.jsonl").exists()
             and (run_dir / "metrics.jsonl").read_text().count("\n") >= 1, 300, "the first step")
    proc.send_signal(signal.SIGUSR1)
    code, lines = _finish(proc)
    assert code == 75, "\n".join(lines[-30:])
    outcome = _outcome(run_dir)
    step = outcome["step"]
    assert outcome["kind"] == "preempted" and outcome["exit_code"] == 75 and step >= 1
    assert outcome["checkpoint"] == f"iter_{step:07d}"
    assert lines[-1].endswith(f"preempted: saved iter_{step:07d}, exit 75")
    assert int((run_dir / "latest_checkpointed_iteration.txt").read_text()) == step

    code, lines = _finish(_start(run_dir, f"train.train_steps={step + 1}"))
    assert code == 0, "\n".join(lines[-30:])
    assert lines[-1].endswith(f"done at step {step + 1}")
    assert _outcome(run_dir)["kind"] == "done" and max(metrics(run_dir)) == step + 1
