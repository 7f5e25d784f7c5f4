"""Proves LocalSlurm with small real jobs: a 2-task srun step, an array job and its dependent, and the
requeue contract the train script uses (signal -> trainer saves and exits 75 -> scontrol requeue ->
the job runs again with SLURM_RESTART_COUNT=1), including which --signal form reaches srun's tasks."""
from __future__ import annotations

import sys
from pathlib import Path

from tests.slurm.cluster import LocalSlurm, wait_until

REPO = Path(__file__).resolve().parents[2]
REQUEUE_EXIT_CODE = 75

# Stands in for `python -m elama.train`: every rank records what it sees, then "trains" until a
# signal (SIGTERM/SIGUSR1 -> record, exit with the requeue code) or for train_s seconds. After a
# requeue (SLURM_RESTART_COUNT >= 1) it finishes at once, as a resumed run that is nearly done would.
FAKE_TRAINER = r'''
import os, signal, sys, time
events, train_s = sys.argv[1], float(sys.argv[2])
rank, restart = os.environ["SLURM_PROCID"], int(os.environ.get("SLURM_RESTART_COUNT", "0"))

def record(what):
    with open(events, "a") as out:
        out.write(f"rank={rank} restart={restart} {what}\n")

def on_signal(signum, _frame):
    record(f"got {signal.Signals(signum).name}")
    sys.exit(int(os.environ["ELAMA_REQUEUE_EXIT_CODE"]))

for sig in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(sig, on_signal)
env = os.environ
record(f"ready ntasks={env['SLURM_NTASKS']} prefix={sys.prefix} "
       f"cuda_conns={env['CUDA_DEVICE_MAX_CONNECTIONS']} requeue_code={env['ELAMA_REQUEUE_EXIT_CODE']}")
deadline = time.monotonic() + (0.0 if restart else train_s)
while time.monotonic() < deadline:
    time.sleep(0.1)
record("done")
'''

# The shape launch/train.sbatch takes: env.sh, srun in the background so a trapped batch signal
# (--signal=B:USR1) can be forwarded to srun, requeue on the trainer's requeue code.
TRAIN_LIKE_SBATCH = r'''#!/bin/bash
#SBATCH --ntasks=2
#SBATCH --output=job-%j.out
#SBATCH --open-mode=append
# shellcheck source=launch/env.sh
source "${SLURM_SUBMIT_DIR}/launch/env.sh"
events="${PWD}/events.log"
restart="${SLURM_RESTART_COUNT:-0}"
echo "batch restart=${restart} start"
trap 'echo "rank=batch restart=${restart} got USR1" >> "${events}"; kill -USR1 "${srun_pid}"' USR1
srun python "${PWD}/trainer.py" "${events}" "${TRAIN_S}" &
srun_pid=$!
rc=0
wait "${srun_pid}" || rc=$?
# A trapped signal ends `wait` early (status > 128) while srun runs on: wait for srun's own status.
while (( rc > 128 )) && kill -0 "${srun_pid}" 2>/dev/null; do
  rc=0
  wait "${srun_pid}" || rc=$?
done
echo "batch srun exit ${rc}"
if (( rc == ELAMA_REQUEUE_EXIT_CODE )); then
  scontrol requeue "${SLURM_JOB_ID}"
fi
exit "${rc}"
'''

ARRAY_SBATCH = r'''#!/bin/bash
#SBATCH --array=0-1
#SBATCH --ntasks=1
#SBATCH --output=array-%A_%a.out
sleep 1
echo "task ${SLURM_ARRAY_TASK_ID} of ${SLURM_ARRAY_TASK_COUNT}" > "shard-${SLURM_ARRAY_TASK_ID}.txt"
'''

MERGE_SBATCH = r'''#!/bin/bash
#SBATCH --ntasks=1
#SBATCH --output=merge-%j.out
cat shard-*.txt > merged.txt
'''


def _job_dir(tmp_path: Path, train_s: float) -> tuple[Path, dict[str, str]]:
    """A job's working dir with the fake trainer and sbatch script; the env for its submission."""
    (tmp_path / "trainer.py").write_text(FAKE_TRAINER)
    (tmp_path / "train.sbatch").write_text(TRAIN_LIKE_SBATCH)
    return tmp_path, {"ELAMA_VENV": sys.prefix, "TRAIN_S": str(train_s)}


def _events(job_dir: Path) -> list[str]:
    path = job_dir / "events.log"
    return path.read_text().splitlines() if path.exists() else []


def _submit_train_like(slurm: LocalSlurm, job_dir: Path, env: dict[str, str], *args: str) -> str:
    # Submitted from the repo root, as users do, so the script finds launch/env.sh through
    # SLURM_SUBMIT_DIR; the job itself runs in its own directory.
    return slurm.sbatch(job_dir / "train.sbatch", f"--chdir={job_dir}", *args, cwd=REPO, env=env)


def _wait_ready(job_dir: Path, ranks: int = 2, timeout_s: float = 60.0) -> None:
    wait_until(lambda: sum(" ready " in line for line in _events(job_dir)) >= ranks, timeout_s,
               f"{ranks} trainer ranks ready in {job_dir / 'events.log'}")


def test_two_task_job_runs_both_ranks_with_the_launch_env(slurm, tmp_path):
    job_dir, env = _job_dir(tmp_path, train_s=0)
    job_id = _submit_train_like(slurm, job_dir, env)
    [job] = slurm.wait(job_id, timeout_s=60)
    assert (job.state, job.exit_code, job.restarts) == ("COMPLETED", 0, 0), job.fields
    ready = sorted(line for line in _events(job_dir) if " ready " in line)
    expected = [f"rank={rank} restart=0 ready ntasks=2 prefix={sys.prefix} cuda_conns=1 "
                f"requeue_code={REQUEUE_EXIT_CODE}" for rank in (0, 1)]
    assert ready == expected, _events(job_dir)
    assert sum(line.endswith(" done") for line in _events(job_dir)) == 2


def test_array_job_then_dependent_job_after_both_tasks(slurm, tmp_path):
    (tmp_path / "array.sbatch").write_text(ARRAY_SBATCH)
    (tmp_path / "merge.sbatch").write_text(MERGE_SBATCH)
    array_id = slurm.sbatch(tmp_path / "array.sbatch", cwd=tmp_path)
    merge_id = slurm.sbatch(tmp_path / "merge.sbatch", f"--dependency=afterok:{array_id}",
                            "--kill-on-invalid-dep=yes", cwd=tmp_path)
    tasks = slurm.wait(array_id, timeout_s=60)
    [merge] = slurm.wait(merge_id, timeout_s=60)
    assert sorted(t.array_task_id for t in tasks) == [0, 1]
    assert all((t.state, t.exit_code) == ("COMPLETED", 0) for t in tasks), [t.fields for t in tasks]
    assert (merge.state, merge.exit_code) == ("COMPLETED", 0), merge.fields
    # ISO timestamps compare as strings; the merge may start in the second the last task ended.
    assert merge.fields["StartTime"] >= max(t.fields["EndTime"] for t in tasks)
    assert (tmp_path / "merged.txt").read_text().splitlines() == ["task 0 of 2", "task 1 of 2"]


def test_sigterm_to_steps_saves_requeues_and_resumes(slurm, tmp_path):
    job_dir, env = _job_dir(tmp_path, train_s=120)
    job_id = _submit_train_like(slurm, job_dir, env)
    _wait_ready(job_dir)
    slurm.signal(job_id, "TERM", to="steps")
    [job] = slurm.wait(job_id, timeout_s=90)
    assert (job.state, job.exit_code, job.restarts) == ("COMPLETED", 0, 1), job.fields
    events = _events(job_dir)
    for rank in (0, 1):
        assert f"rank={rank} restart=0 got SIGTERM" in events, events
        assert f"rank={rank} restart=1 done" in events, events
    assert not any(line.startswith("rank=batch") for line in events), events
    assert [run["JobState"] for run in slurm.runs(job_id)][-1] == "COMPLETED"
    assert len(slurm.runs(job_id)) == 2, slurm.runs(job_id)
    log = (job_dir / f"job-{job_id}.out").read_text()
    assert f"batch srun exit {REQUEUE_EXIT_CODE}" in log and "batch restart=1 start" in log, log


def test_signal_before_time_limit_reaches_the_trainer(slurm, tmp_path):
    """--signal=USR1@N goes to every task of every step and not to the batch shell; --signal=B:USR1@N
    goes to the batch shell only, which must forward it to srun. slurmctld checks these every 30 s,
    so delivery comes up to 30 s after the due time (here 10 s after start: --time=2 min, @110 s).
    The two jobs run side by side, one task each, to pay that wait once."""
    forms = {"USR1": tmp_path / "steps", "B:USR1": tmp_path / "batch"}
    job_ids = {}
    for form, job_dir in forms.items():
        job_dir.mkdir()
        job_dir, env = _job_dir(job_dir, train_s=100)
        job_ids[form] = _submit_train_like(slurm, job_dir, env, "--ntasks=1", "--time=2",
                                           f"--signal={form}@110")
    for form, job_dir in forms.items():
        [job] = slurm.wait(job_ids[form], timeout_s=120)
        events = _events(job_dir)
        assert (job.state, job.exit_code, job.restarts) == ("COMPLETED", 0, 1), (form, job.fields,
                                                                                   events)
        assert ("rank=batch restart=0 got USR1" in events) == form.startswith("B:"), (form, events)
        assert "rank=0 restart=0 got SIGUSR1" in events, (form, events)
        assert "rank=0 restart=1 done" in events, (form, events)
