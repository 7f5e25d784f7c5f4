"""The planner's checkpoint cost model: the fully reshardable gather's bytes (the 8B run at tp=2:
~48 GB per rank per save), nothing moved by dp_reshardable, the window verdict."""
from __future__ import annotations

from elama.checkpoint_cost import PREEMPTION_WINDOW_S, checkpoint_cost


def _cost(fmt, params=4_015_000_000, dp=240, **kw):
    args = dict(params_per_rank=params, dp=dp, weight_bytes=2, distributed_optimizer=True,
                optimizer_format=fmt, network_gb_s=40.0, gpus_per_node=8)
    return checkpoint_cost(**{**args, **kw})


def test_fully_reshardable_gathers_the_shards_optimizer_state_to_every_rank():
    full, fast = _cost("fully_reshardable"), _cost("dp_reshardable")
    assert 47e9 < full.moved_bytes < 48.2e9 and full.held_bytes == 12 * 4_015_000_000
    assert fast.moved_bytes == 0 and fast.held_bytes == 0
    assert fast.written_bytes == full.written_bytes == (2 + 12) * 4_015_000_000 / 240
    assert fast.blocking_s < full.blocking_s and fast.total_s < full.total_s


def test_plain_optimizer_moves_nothing_and_the_window_verdict():
    assert _cost("fully_reshardable", distributed_optimizer=False).moved_bytes == 0
    slow = _cost("dp_reshardable", dp=1, write_gb_s_per_node=0.1)
    assert slow.total_s > PREEMPTION_WINDOW_S and not slow.fits_window
    assert _cost("dp_reshardable").fits_window
