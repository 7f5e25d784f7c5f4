"""The distributed lane runs its ranks on CPU even on a GPU host: CUDA is hidden from them."""
from __future__ import annotations

import pytest

from tests.spawn import run_distributed

pytestmark = pytest.mark.distributed


def _sees_cuda() -> tuple:
    import os

    import torch

    return os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.is_available()


def test_rank_processes_of_this_lane_see_no_gpu():
    assert run_distributed(_sees_cuda, 1) == [("", False)]
