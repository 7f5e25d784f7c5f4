"""Shared fixtures: no test process may outlive the suite, process-group teardown after every
test, skip rules for the gpu lane."""
from __future__ import annotations

import os

import pytest

from tests.survivors import become_subreaper, end_survivors

os.environ.setdefault("OMP_NUM_THREADS", "1")
SURVIVOR_GRACE_S = float(os.environ.get("ELAMA_SURVIVOR_GRACE_S", "15"))


@pytest.fixture(autouse=True, scope="session")
def _no_process_survives():
    """Fails the suite when a process a test started (or its orphans: a killed rank's Manager,
    resource tracker, tokenizer workers) is still alive at the end. This process becomes their
    subreaper, so orphans are re-parented here, not to init, and can be found; survivors are
    killed and listed."""
    become_subreaper()
    yield
    survivors = end_survivors(SURVIVOR_GRACE_S)
    if survivors:
        pytest.fail(f"{len(survivors)} test processes outlived the tests (killed now):\n"
                    + "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in survivors), pytrace=False)


@pytest.fixture(autouse=True, scope="module")
def _teardown_process_groups():
    """A module that initialised torch.distributed in this process (a world of one, for unit
    tests; multi-rank tests run in spawned processes) must not leak it to the next module."""
    yield
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        from elama.parallel.setup import destroy_distributed

        destroy_distributed()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (and Transformer Engine for TE/FP8); "
                                   "this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
