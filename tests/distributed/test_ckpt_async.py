"""Async checkpoint saving on real ranks (dp=2, distributed optimizer): the tracker names a
checkpoint only once every rank's background write has been committed, what an async save writes
equals a synchronous save of the same state, and both optimizer formats resume exactly."""
from __future__ import annotations

import pytest
import torch

from elama import checkpoint
from tests.model_utils import TINY_OVERRIDES
from tests.spawn import run_distributed

pytestmark = pytest.mark.distributed


def _overrides(run_dir, *extra) -> list[str]:
    return TINY_OVERRIDES + ["parallel.distributed_optimizer=true", "train.global_batch_size=4",
                             "train.train_steps=4", "logging.tensorboard=false",
                             f"checkpoint.run_dir={run_dir}", *extra]


def _save_twice(run_dir: str, sync_dir: str, fmt: str) -> dict:
    """Two steps, then an async save (checked before and after its commit) and a synchronous
    save of the same state elsewhere; then two more steps and the end-of-run save."""
    from elama.config import load_config
    from elama.trainer import Trainer

    cfg = load_config(_overrides(run_dir, f"checkpoint.optimizer_format={fmt}",
                                 "train.train_steps=2"))
    trainer = Trainer(cfg, 2)
    out = {}
    try:
        trainer.train()  # 2 steps, saves step 2 and waits for its commit
        out["after_train"] = checkpoint.read_tracker(run_dir)
        cfg.train.train_steps = 4
        trainer.cfg = cfg
        trainer.state.step += 1  # a step number no save has used: the async save under test
        trainer.save()
        out["pending"] = trainer.saver.pending
        out["tracker_before_commit"] = checkpoint.read_tracker(run_dir)
        out["tmp_exists"] = (checkpoint.Path(run_dir) / "iter_0000003.tmp").is_dir()
        trainer.saver.wait()
        out["tracker_after_commit"] = checkpoint.read_tracker(run_dir)
        sync = checkpoint.Saver(optimizer_format=fmt, async_save=False)
        sync.save(sync_dir, 3, model=trainer.model, optimizer=trainer.optimizer,
                  meta={"step": 3}, layout=trainer.dims.describe(), keep_last=1)
        out["sync_tracker"] = checkpoint.read_tracker(sync_dir)
    finally:
        trainer.close()
    return out


def _plain(path) -> dict:
    import torch.distributed as dist
    from megatron.core.dist_checkpointing import load_plain_tensors

    from elama.parallel import setup

    if not dist.is_initialized():
        setup.init_single_process()
    return load_plain_tensors(str(path))


@pytest.mark.parametrize("fmt", ["dp_reshardable", "fully_reshardable"])
def test_async_save_commits_after_the_write_and_equals_a_sync_save(fmt, tmp_path):
    run_dir, sync_dir = tmp_path / "run", tmp_path / "sync"
    got = run_distributed(_save_twice, 2, str(run_dir), str(sync_dir), fmt)
    for rank in got:
        assert rank["after_train"] == 2
        assert rank["pending"] == 3 and rank["tmp_exists"]
        assert rank["tracker_before_commit"] == 2  # written only by the commit
        assert rank["tracker_after_commit"] == 3 and rank["sync_tracker"] == 3
    assert not (run_dir / "iter_0000003.tmp").exists()
    assert checkpoint.read_meta(run_dir / "iter_0000003")["optimizer_format"] == fmt
    for part in ("model", "optimizer"):
        a, b = _plain(run_dir / "iter_0000003" / part), _plain(sync_dir / "iter_0000003" / part)
        assert a.keys() == b.keys() and len(a) > 0
        assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k])), part


def _argv(run_dir, *extra) -> list[str]:
    return _overrides(run_dir, "checkpoint.save_interval=2", *extra)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    from tests.launch import train

    run_dir = tmp_path_factory.mktemp("straight")
    assert train(2, _argv(run_dir), run_dir / "logs") == [0, 0]
    return run_dir


@pytest.mark.parametrize("fmt", ["dp_reshardable", "fully_reshardable"])
def test_resume_at_dp2_is_bitwise_exact(straight, fmt, tmp_path):
    """The dp_reshardable loader hands torch Adam a stale `step` (patched in
    elama/parallel/patches.py): without the patch the step after the resume differs."""
    from tests.launch import metrics, train

    run_dir = tmp_path / "run"
    argv = _argv(run_dir, f"checkpoint.optimizer_format={fmt}")
    assert train(2, argv + ["train.exit_interval=2"], tmp_path / "logs") == [0, 0]
    assert train(2, argv, tmp_path / "logs") == [0, 0]
    assert "torch_adam_step_passthrough" in (tmp_path / "logs" / "rank0.log").read_text()
    want, got = metrics(straight), metrics(run_dir)
    assert sorted(got) == [1, 2, 3, 4]
    assert [(got[s]["loss"], got[s]["grad_norm"]) for s in got] == \
        [(want[s]["loss"], want[s]["grad_norm"]) for s in got]

