"""The streamed merge's parts against their references: the in-place chunk kernels against the
whole-tensor kernels of elama.merge, bitwise (signed zeros included) on inputs built to hit the
edge cases, in chunks that do not divide the tensor; TIES thresholds against kthvalue; SLERP's
dot products against float64 dots; the compute thread cap."""
from __future__ import annotations

import math
import os

import pytest
import torch

import elama.merge_stream as stream
from elama.merge import merge_linear, merge_task_arithmetic, merge_ties


def _inputs(models: int, n: int = 5000) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Half random normals, half a coarse grid of bf16-exact values: there, task vectors are often
    exactly zero, cancel each other (an elected sign of 0) or tie at a threshold; some base
    entries are -0."""
    g = torch.Generator().manual_seed(models)

    def one() -> torch.Tensor:
        grid = torch.randint(-3, 4, (n // 2,), generator=g) / 4
        return torch.cat([torch.randn(n - n // 2, generator=g), grid]).bfloat16()

    base, ms = one(), [one() for _ in range(models)]
    base[-50:] = -0.0
    ms[0][-25:] = 0.0
    return base, ms


def _streamed(kernel, base: torch.Tensor, ms: list[torch.Tensor], bufs: dict) -> torch.Tensor:
    out = torch.empty(base.numel(), dtype=torch.float32)
    for c, work in stream.chunks([base, *ms], bufs):
        out[c:c + work.shape[1]] = kernel(work[0], work[1:])
    return out


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("models", [1, 2, 3])
def test_chunk_kernels_equal_whole_tensor_kernels_bitwise(models, monkeypatch):
    monkeypatch.setattr(stream, "COMPUTE_CHUNK_ELEMS", 768)
    base, ms = _inputs(models)
    wide = [t.float() for t in (base, *ms)]
    weights = [1.0, 0.5, -0.75][:models]
    bufs: dict = {}
    if models == 1:
        got = _streamed(stream.linear_kernel(0.3), base, ms, bufs)
        assert _bitwise_equal(got, merge_linear(wide[0], wide[1], 0.3))
    got = _streamed(stream.task_arithmetic_kernel(weights, 0.7), base, ms, bufs)
    assert _bitwise_equal(got, merge_task_arithmetic(wide[0], wide[1:], weights, 0.7))
    # One model has a kernel of its own: its weight and alpha are varied (a negative weight
    # makes -0 task vector entries; alpha 1.0 skips a multiply).
    cases = [(weights, 0.9)] + ([([-0.75], 1.0), ([0.5], -0.5)] if models == 1 else [])
    for density in (1.0, 0.4):
        taus = [(m - wide[0]).abs() for m in wide[1:]]
        k = math.ceil(density * base.numel())
        thresholds = [None if density == 1.0 else t.kthvalue(t.numel() - k + 1).values.item()
                      for t in taus]
        for w, alpha in cases:
            got = _streamed(stream.ties_kernel(thresholds, w, alpha, bufs), base, ms, bufs)
            want = merge_ties(wide[0], wide[1:], w, density, alpha)
            assert _bitwise_equal(got, want), (models, density, w, alpha)
            assert (want == wide[0]).any() and (want != wide[0]).any()  # both cases exercised


def test_compute_threads_leave_cpus_to_the_io_threads_and_restore():
    before = torch.get_num_threads()
    cpus = len(os.sched_getaffinity(0))
    with stream.compute_threads() as threads:
        assert torch.get_num_threads() == threads == max(1, min(before, cpus - 2))
    assert torch.get_num_threads() == before


def _one_tensor_checkpoints(tmp_path, tensors: dict) -> list:
    """A reader of a checkpoint holding one tensor "w", per (name, tensor)."""
    from elama.convert.hf import HFCheckpointReader, ShardedSafetensorsWriter

    readers = []
    for name, t in tensors.items():
        with ShardedSafetensorsWriter(tmp_path / name, 10**9) as w:
            w.add("w", t)
        (tmp_path / name / "config.json").write_text("{}")
        readers.append(HFCheckpointReader(tmp_path / name))
    return readers


def test_thresholds_are_exact_kth_largest_magnitudes(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "READ_BLOCK_BYTES", 512)
    g = torch.Generator().manual_seed(3)
    base = torch.randn(64, 33, generator=g)
    model = base + torch.randn(64, 33, generator=g) * torch.rand(64, 33, generator=g)
    model[5, :7] = base[5, :7] + 0.25  # repeated magnitudes at the threshold are kept
    readers = _one_tensor_checkpoints(tmp_path, {"base": base, "model": model})
    for density in (0.01, 0.1, 0.5, 0.9):
        k = math.ceil(density * base.numel())
        want = (model - base).abs().reshape(-1).kthvalue(base.numel() - k + 1).values.item()
        assert stream.ties_thresholds("w", readers, {}, density) == [want]
    for r in readers:
        r.close()


def test_slerp_dots_match_float64_dots(tmp_path, monkeypatch):
    """Chunks of 2048 (batched float32 pieces) and a last chunk of 100 (float64), several blocks."""
    from elama.merge import _dot64

    monkeypatch.setattr(stream, "COMPUTE_CHUNK_ELEMS", 2048)
    monkeypatch.setattr(stream, "READ_BLOCK_BYTES", 4 * 4096)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3 * 2048 + 100, generator=g).view(-1, 4)
    model = 0.9 * base + 0.3 * torch.randn(base.shape, generator=g)
    readers = _one_tensor_checkpoints(tmp_path, {"base": base, "model": model})
    got = stream.slerp_dots("w", readers, {})
    want = (_dot64(base, base), _dot64(model, model), _dot64(base, model))
    assert got == pytest.approx(want, rel=1e-6) and got[2] != pytest.approx(got[0], rel=1e-3)
    for r in readers:
        r.close()
