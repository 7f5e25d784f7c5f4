"""The trainer on real rank processes: exact resume after kill -9, resume into another layout,
a kill during a save, preemption by SIGTERM, init_from, non-finite losses."""
from __future__ import annotations

import shutil
import signal

import pytest
import torch

from elama import checkpoint
from tests.launch import Ranks, metrics, train, wait_for

pytestmark = pytest.mark.distributed


def _argv(run_dir, blend, *extra) -> list[str]:
    return ["model=tiny", "model.precision=fp32", "data.seq_len_tokens=32",
            f"data.train_blend=[{{prefix:{blend['ecommerce']},weight:0.5}},"
            f"{{prefix:{blend['general']},weight:0.5}}]",
            "train.micro_batch_size=1", "train.global_batch_size=4", "train.train_steps=20",
            "optim.lr=3e-3", "optim.warmup_steps=2", "logging.tensorboard=false",
            f"checkpoint.run_dir={run_dir}", *extra]


# the distributed optimizer too: its reload path is the one with torch-Adam fixes (elama.optim)
TP2_PP2 = ["parallel.tp=2", "parallel.pp=2", "parallel.distributed_optimizer=true"]


def _weights(iter_dir) -> dict:
    """Full tensors of a saved model, read in this (single) process."""
    import torch.distributed as dist
    from megatron.core.dist_checkpointing import load_plain_tensors

    from elama.parallel import setup

    if not dist.is_initialized():
        setup.init_single_process()
    return load_plain_tensors(str(iter_dir / "model"))


@pytest.fixture(scope="module")
def straight_run(tiny_blend, tmp_path_factory):
    """20 steps at tp=2, pp=2 in one go (saving at 10 and 20)."""
    run_dir = tmp_path_factory.mktemp("straight")
    codes = train(4, _argv(run_dir, tiny_blend, *TP2_PP2, "checkpoint.save_interval=10"),
                  run_dir / "logs")
    assert codes == [0, 0, 0, 0], (run_dir / "logs" / "rank0.log").read_text()[-3000:]
    return run_dir


def test_resume_after_kill_is_bitwise_exact(straight_run, tiny_blend, tmp_path):
    run_dir = tmp_path / "killed"
    argv = _argv(run_dir, tiny_blend, *TP2_PP2, "checkpoint.save_interval=10")
    ranks = Ranks(4, argv, tmp_path / "logs")
    wait_for(lambda: checkpoint.read_tracker(run_dir) == 10, 300, "the step-10 checkpoint")
    ranks.kill()  # kill -9, somewhere after step 10
    assert train(4, argv, tmp_path / "logs") == [0, 0, 0, 0]
    want, got = metrics(straight_run), metrics(run_dir)
    assert sorted(got) == list(range(1, 21))
    assert [got[s]["loss"] for s in got] == [want[s]["loss"] for s in want]  # bitwise
    assert [got[s]["grad_norm"] for s in got] == [want[s]["grad_norm"] for s in want]
    a, b = _weights(straight_run / "iter_0000020"), _weights(run_dir / "iter_0000020")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_into_another_layout(straight_run, tiny_blend, tmp_path):
    """tp=2, pp=2 -> tp=1, pp=1. The default (dp_reshardable) optimizer state is refused at
    another tp/pp, naming the way through: one step at the saved layout with the fully
    reshardable format, whose checkpoint then loads at tp=1, pp=1 and step 12 matches."""
    run_dir = tmp_path / "relayout"
    run_dir.mkdir()
    shutil.copytree(straight_run / "iter_0000010", run_dir / "iter_0000010")
    checkpoint.write_tracker(run_dir, 10)
    single = _argv(run_dir, tiny_blend, "parallel.distributed_optimizer=true",
                   "train.exit_interval=12")
    assert train(1, single, tmp_path / "refused") == [2]
    log = (tmp_path / "refused" / "rank0.log").read_text()
    assert "dp_reshardable" in log and "checkpoint.optimizer_format=fully_reshardable" in log
    assert "Traceback" not in log and checkpoint.read_tracker(run_dir) == 10
    codes = train(4, _argv(run_dir, tiny_blend, *TP2_PP2, "train.exit_interval=11",
                           "checkpoint.optimizer_format=fully_reshardable"), tmp_path / "logs")
    assert codes == [0, 0, 0, 0], (tmp_path / "logs" / "rank0.log").read_text()[-3000:]
    assert checkpoint.read_meta(run_dir / "iter_0000011")["optimizer_format"] == "fully_reshardable"
    codes = train(1, single, tmp_path / "logs")
    assert codes == [0], (tmp_path / "logs" / "rank0.log").read_text()[-3000:]
    want, got = metrics(straight_run), metrics(run_dir)
    # Same weights and optimizer state, other reduction orders: float32 rounding only. The
    # gradient norm of a trained model with a 128k vocabulary is the noisiest figure (measured
    # 1.3e-4 relative), the loss the tightest (2e-8).
    assert got[11]["loss"] == want[11]["loss"]  # the same layout: bitwise
    assert got[12]["loss"] == pytest.approx(want[12]["loss"], rel=1e-5)
    assert got[12]["grad_norm"] == pytest.approx(want[12]["grad_norm"], rel=1e-3)


def test_kill_during_save_keeps_previous_checkpoint(tiny_blend, tmp_path):
    run_dir = tmp_path / "run"
    argv = _argv(run_dir, tiny_blend, "train.train_steps=10", "checkpoint.save_interval=5")
    ranks = Ranks(2, argv + ["parallel.pp=2"], tmp_path / "logs")
    wait_for(lambda: checkpoint.read_tracker(run_dir) == 5, 300, "the step-5 checkpoint")
    wait_for(lambda: (run_dir / "iter_0000010.tmp").exists(), 300, "the step-10 save to start")
    ranks.kill()
    assert checkpoint.read_tracker(run_dir) == 5
    assert not (run_dir / "iter_0000010").exists()
    assert checkpoint.find_resume(run_dir) == run_dir / "iter_0000005"
    codes = train(2, argv + ["parallel.pp=2"], tmp_path / "logs")
    assert codes == [0, 0] and checkpoint.read_tracker(run_dir) == 10
    assert "resumed from" in (tmp_path / "logs" / "rank0.log").read_text()


def test_sigterm_saves_exits_for_requeue_and_resumes(tiny_blend, tmp_path):
    run_dir = tmp_path / "run"
    argv = _argv(run_dir, tiny_blend, "parallel.tp=2", "train.train_steps=400")
    ranks = Ranks(2, argv, tmp_path / "logs")
    wait_for(lambda: (run_dir / "metrics.jsonl").exists() and len(metrics(run_dir)) >= 3, 300,
             "three training steps")
    ranks.signal(signal.SIGTERM)  # as scancel --signal=TERM delivers it to every task
    assert ranks.wait(120) == [75, 75]
    saved = checkpoint.read_tracker(run_dir)
    assert saved is not None and saved >= 3
    resumed = Ranks(2, argv + ["train.exit_interval=" + str(saved + 1)], tmp_path / "logs")
    assert resumed.wait(300) == [0, 0]
    assert f"at step {saved}" in resumed.log(0)
    assert checkpoint.read_tracker(run_dir) == saved + 1


def test_init_from_takes_weights_not_the_schedule(straight_run, tiny_blend, tmp_path):
    run_dir = tmp_path / "finetune"
    codes = train(1, _argv(run_dir, tiny_blend, f"checkpoint.init_from={straight_run}",
                           "train.train_steps=2"), tmp_path / "logs")
    assert codes == [0]
    got, source = metrics(run_dir), metrics(straight_run)
    assert sorted(got) == [1, 2]  # step count restarts
    assert got[1]["lr"] == pytest.approx(3e-3 / 2)  # warmup from the start: lr_at(0)
    assert got[1]["loss"] < source[1]["loss"] - 1.0  # but the trained weights came along
    meta = checkpoint.read_meta(run_dir / "iter_0000002")
    assert meta["train_state"]["step"] == 2


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_loss_is_reported_with_the_step(policy, tiny_blend, tmp_path):
    run_dir = tmp_path / "nan"
    codes = train(1, _argv(run_dir, tiny_blend, "model.init_method_std=1e30", "train.train_steps=3",
                           f"train.nonfinite={policy}"), tmp_path / "logs")
    log = (tmp_path / "logs" / "rank0.log").read_text()
    assert "step 1: non-finite loss" in log
    if policy == "stop":
        assert codes == [3], log[-3000:]
        assert checkpoint.read_tracker(run_dir) is None
    else:  # every step skipped and counted, none applied
        assert codes == [0], log[-3000:]
        meta = checkpoint.read_meta(run_dir / "iter_0000003")
        assert meta["train_state"]["skipped_steps"] == 3
