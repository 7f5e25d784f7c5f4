"""A run that fails or stops on a non-finite loss states it: the traceback (for a failure), then
rank 0's last line with the step and exit code, and <run_dir>/outcome.json saying the same.
One in-process world of one rank; the failure is injected into the real loop's train_step."""
from __future__ import annotations

import json
import logging

import pytest
import torch.distributed as dist

from elama import trainer as trainer_module
from elama.config import load_config
from elama.outcome import Outcome
from elama.train import EXIT_NONFINITE, run

SMALL = ["data=synthetic", "model.vocab_size=512", "model.num_layers=2", "data.seq_len_tokens=16",
         "train.global_batch_size=2", "train.micro_batch_size=1", "train.train_steps=5",
         "checkpoint.async_save=false", "logging.tensorboard=false"]


def _second_step(monkeypatch, replacement):
    """Run the real train_step once, then `replacement` (which raises or returns)."""
    real, calls = trainer_module.train_step, []

    def step(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs) if len(calls) == 1 else replacement(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", step)


def _run(tmp_path, caplog) -> tuple[int, dict, list]:
    cfg = load_config(SMALL + [f"checkpoint.run_dir={tmp_path / 'run'}"])
    caplog.set_level(logging.INFO)
    code = run(cfg, world_size=1)
    assert not dist.is_initialized()  # closed even after the failure
    records = [r for r in caplog.records if r.name == "elama.train"]
    return code, json.loads((tmp_path / "run" / "outcome.json").read_text()), records


def test_failed_run_logs_the_traceback_then_the_outcome(tmp_path, caplog, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom in step 2")

    _second_step(monkeypatch, boom)
    code, outcome, records = _run(tmp_path, caplog)
    assert code == 1
    assert (outcome["kind"], outcome["step"], outcome["exit_code"]) == ("failed", 1, 1)
    assert outcome["error"] == "RuntimeError: boom in step 2" and outcome["checkpoint"] is None
    assert records[-2].exc_info is not None  # the traceback comes before the last line
    assert records[-1].getMessage() == ("failed at step 1: RuntimeError: boom in step 2; "
                                        "nothing saved, exit 1") == outcome["line"]


def test_nonfinite_stop_is_exit_3_with_its_reason(tmp_path, caplog, monkeypatch):
    _second_step(monkeypatch, lambda *a, **k: trainer_module.StepResult(
        float("nan"), float("nan"), 32, stepped=False))
    code, outcome, records = _run(tmp_path, caplog)
    assert code == EXIT_NONFINITE == outcome["exit_code"]
    assert outcome["kind"] == "nonfinite" and outcome["step"] == 2
    assert "non-finite loss nan" in outcome["error"] and "train.nonfinite=stop" in outcome["error"]
    assert records[-1].getMessage() == outcome["line"]
    assert records[-1].getMessage().startswith("nonfinite at step 2: ")


@pytest.mark.parametrize("outcome,line", [
    (Outcome("done", 60, 0, "iter_0000060"), "done at step 60"),
    (Outcome("preempted", 30, 75, "iter_0000030"), "preempted: saved iter_0000030, exit 75"),
    (Outcome("exited", 30, 0, "iter_0000030"),
     "stopped at step 30 (train.exit_interval): saved iter_0000030, exit 0"),
    (Outcome("failed", None, 1, None, "OSError: disk full"),
     "failed before the first step: OSError: disk full; nothing saved, exit 1"),
])
def test_outcome_lines(outcome, line):
    assert outcome.line() == line
