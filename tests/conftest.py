"""Shared fixtures: process-group teardown after every test, skip rules for the gpu lane."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


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
