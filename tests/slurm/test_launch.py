"""The real launch scripts on a one-node Slurm: launch/preprocess.sbatch as an array job with a
dependent merge, launch/train.sbatch with the CPU experiment on 2 tasks, and preemption:
scancel --signal=TERM -> every rank saves and exits 75 -> the script requeues -> the run resumes."""
from __future__ import annotations

import sys
from pathlib import Path

from elama import checkpoint
from tests.launch import metrics
from tests.slurm.cluster import LocalSlurm, wait_until

REPO = Path(__file__).resolve().parents[2]
# The scripts' #SBATCH lines ask for 8-GPU H100 nodes; a CPU test node gets two tasks instead.
CPU_NODE = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
            "--time=10"]
TINY_2_TASKS = ["experiment=cpt_tiny_cpu", "parallel.pp=1", "train.eval_interval=0",
                "logging.tensorboard=false", "data.seq_len_tokens=64"]


def _submit(slurm: LocalSlurm, script: str, job_dir: Path, *sbatch_args: str,
            script_args: list[str], env: dict | None = None) -> str:
    return slurm.sbatch(REPO / "launch" / script, f"--chdir={job_dir}", *sbatch_args, cwd=REPO,
                        env={"ELAMA_VENV": sys.prefix, **(env or {})}, script_args=script_args)


def _log(job_dir: Path, job_id: str, name: str) -> str:
    path = job_dir / f"{name}-{job_id}.out"
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


def test_preprocess_array_then_train(slurm, tmp_path):
    from elama.data.demo_corpus import write_demo_corpus
    from elama.data.manifest import read_manifest

    corpus = write_demo_corpus(str(tmp_path / "raw"), seed=0, ecommerce_docs=200, general_bytes=0)
    prefix = str(tmp_path / "data" / "ecommerce")
    tokenize = ["--input", *corpus["ecommerce"], "--output-prefix", prefix, "--text-key", "title",
                "--text-key", "description", "--language-key", "lang", "--no-progress"]
    small = ["--cpus-per-task=1", "--mem=1G"]  # the script asks for a 32-core, 64 GB node
    array = _submit(slurm, "preprocess.sbatch", tmp_path, "--array=0-1", *small,
                    script_args=tokenize)
    merge = _submit(slurm, "preprocess.sbatch", tmp_path, f"--dependency=afterok:{array}",
                    "--kill-on-invalid-dep=yes", *small, script_args=tokenize + ["--merge"])
    tasks = slurm.wait(array, timeout_s=180)
    assert all((t.state, t.exit_code) == ("COMPLETED", 0) for t in tasks), [t.fields for t in tasks]
    [merged] = slurm.wait(merge, timeout_s=180)
    assert (merged.state, merged.exit_code) == ("COMPLETED", 0), _log(tmp_path, merge, "elama-preprocess")
    manifest = read_manifest(prefix)
    assert manifest["kind"] == "merged" and manifest["documents_written"] == 200

    run_dir = tmp_path / "run"
    job = _submit(slurm, "train.sbatch", tmp_path, *CPU_NODE, env={"ELAMA_RUN_DIR": str(run_dir)},
                  script_args=TINY_2_TASKS + [f"data.train_blend=[{{prefix:{prefix},weight:1}}]",
                                              "data.valid_blends=[]", "train.train_steps=6"])
    [result] = slurm.wait(job, timeout_s=300)
    assert (result.state, result.exit_code) == ("COMPLETED", 0), _log(tmp_path, job, "elama-train")
    assert checkpoint.read_tracker(run_dir) == 6
    assert sorted(metrics(run_dir)) == [5, 6]  # cpt_tiny_cpu logs every 5 steps and the last


def test_bad_config_fails_before_any_rank_starts(slurm, tmp_path):
    run_dir = tmp_path / "run"
    job = _submit(slurm, "train.sbatch", tmp_path, *CPU_NODE, env={"ELAMA_RUN_DIR": str(run_dir)},
                  script_args=TINY_2_TASKS + ["data.train_blend=[{prefix:/nonexistent/x,weight:1}]",
                                              "train.global_batch_size=3"])
    [result] = slurm.wait(job, timeout_s=120)
    log = _log(tmp_path, job, "elama-train")
    assert result.state == "FAILED" and result.exit_code == 2, log
    assert "/nonexistent/x.manifest.json: no such manifest" in log
    assert "global_batch_size=3 is not divisible" in log
    assert not (run_dir / "logs").exists() or not any((run_dir / "logs").iterdir())  # no rank ran


def test_sigterm_saves_requeues_and_resumes(slurm, tmp_path):
    run_dir = tmp_path / "run"
    job = _submit(slurm, "train.sbatch", tmp_path, *CPU_NODE, env={"ELAMA_RUN_DIR": str(run_dir)},
                  script_args=TINY_2_TASKS + ["data=synthetic", "train.train_steps=40",
                                              "train.log_interval=1"])
    wait_until(lambda: (run_dir / "metrics.jsonl").exists() and len(metrics(run_dir)) >= 2, 240,
               "two training steps")
    slurm.signal(job, "TERM", to="steps")  # every rank of the running step
    [result] = slurm.wait(job, timeout_s=400)
    log = _log(tmp_path, job, "elama-train")
    assert (result.state, result.exit_code, result.restarts) == ("COMPLETED", 0, 1), log
    assert "ranks exited with 75" in log and "restart 1" in log
    rank0 = (run_dir / "logs" / f"{job}-rank0.log").read_text()
    assert "received SIGTERM" in rank0 and "resumed from" in rank0
    assert checkpoint.read_tracker(run_dir) == 40
    assert sorted(metrics(run_dir)) == list(range(1, 41))
