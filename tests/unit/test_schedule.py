"""The learning rate as a pure function of the step (e-Llama: warmup then cosine to a floor)."""
from __future__ import annotations

import math

import pytest

from elama.config import OptimConfig
from elama.optim import lr_at


def test_warmup_then_cosine_to_min_lr():
    o = OptimConfig(lr=3e-5, min_lr=3e-6, warmup_steps=10, schedule="cosine")
    assert lr_at(0, o, 110) == pytest.approx(3e-6)  # (0+1)/10 of the peak: no wasted update
    assert lr_at(9, o, 110) == pytest.approx(3e-5)
    assert lr_at(10, o, 110) == pytest.approx(3e-5)
    assert lr_at(60, o, 110) == pytest.approx(3e-6 + 0.5 * 2.7e-5)  # half-way: cos(pi/2)
    mid = 10 + 25
    assert lr_at(mid, o, 110) == pytest.approx(3e-6 + 2.7e-5 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, o, 110) == pytest.approx(3e-6)
    assert lr_at(500, o, 110) == pytest.approx(3e-6)  # past the end: the floor


def test_wsd_is_flat_then_decays_linearly():
    o = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=2, schedule="wsd", wsd_decay_steps=4)
    values = [lr_at(s, o, 12) for s in range(12)]
    assert values[:2] == pytest.approx([0.5, 1.0])
    assert values[2:8] == pytest.approx([1.0] * 6)
    assert values[8:] == pytest.approx([1.0, 0.775, 0.55, 0.325])


def test_decay_steps_override_and_constant():
    o = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, schedule="linear", decay_steps=4)
    assert [lr_at(s, o, 100) for s in range(6)] == pytest.approx([1, 0.75, 0.5, 0.25, 0, 0])
    c = OptimConfig(lr=2.0, min_lr=0.0, warmup_steps=1, schedule="constant")
    assert [lr_at(s, c, 10) for s in range(3)] == pytest.approx([2.0, 2.0, 2.0])
