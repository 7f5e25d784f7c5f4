"""ParallelDims invariants and the layer-to-stage arithmetic."""
from __future__ import annotations

import pytest

from elama.parallel.dims import ParallelDims


def test_product_must_equal_world_size_and_message_has_numbers():
    with pytest.raises(ValueError, match=r"2\*2\*1\*3 = 12 != world_size=8"):
        ParallelDims(tp=2, pp=2, vpp=1, cp=1, dp=3, world_size=8)


def test_sequence_parallel_needs_tp():
    with pytest.raises(ValueError, match="sequence_parallel needs tp > 1"):
        ParallelDims(tp=1, pp=1, vpp=1, cp=1, dp=1, world_size=1, sequence_parallel=True)


def test_interleaved_stage_order_follows_megatron():
    d = ParallelDims(tp=1, pp=2, vpp=2, cp=1, dp=1, world_size=2)
    # 8 layers, 4 chunks of 2: chunk k on stage k % pp
    assert [d.stage_of_layer(i, 8) for i in range(8)] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert d.num_microbatches(8, 2) == 4
    with pytest.raises(ValueError, match="not divisible by pp\\*vpp=2\\*2=4"):
        d.layers_per_chunk(6)
