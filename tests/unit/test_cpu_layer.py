"""The CPU device layer: every listed megatron-core CUDA call site still exists, an unlisted CUDA
call fails loudly, and the CUDA RNG tracker runs on CPU generator states."""
from __future__ import annotations

import pytest
import torch

from elama.parallel import cpu


@pytest.fixture(scope="module", autouse=True)
def layer():
    cpu.apply_cpu_device_layer()


def test_every_listed_site_is_still_in_megatron_core():
    assert cpu.missing_sites() == []


def test_a_vanished_site_is_reported(monkeypatch):
    fake = cpu.CudaSite("optimizer/optimizer.py", "FP32Optimizer.__init__", "factory",
                        "device='tpu'", "test")
    monkeypatch.setattr(cpu, "SITES", cpu.SITES + (fake,))
    assert any("no longer contains \"device='tpu'\"" in m for m in cpu.missing_sites())
    gone = cpu.CudaSite("optimizer/optimizer.py", "NoSuchOptimizer.step", "factory", "x", "test")
    monkeypatch.setattr(cpu, "SITES", cpu.SITES + (gone,))
    assert any("NoSuchOptimizer.step" in m for m in cpu.missing_sites())


def test_unlisted_cuda_calls_raise_with_the_call_site():
    with pytest.raises(cpu.CpuLayerError, match=r"test_cpu_layer.py:\d+ in "
                                                r"test_unlisted_cuda_calls_raise_with_the_call_site"):
        torch.cuda.current_device()
    with pytest.raises(cpu.CpuLayerError):
        torch.zeros(2).cuda()
    with pytest.raises(cpu.CpuLayerError):
        torch.cuda.synchronize()


def test_listed_factory_site_is_redirected():
    from megatron.core.transformer.utils import get_default_causal_mask

    before = sum(n for (path, fn, kind), n in cpu.HITS.items() if fn == "get_default_causal_mask")
    mask = get_default_causal_mask(4)
    assert mask.device.type == "cpu" and mask.dtype == torch.bool
    assert mask.tolist()[0] == [False, True, True, True]
    after = sum(n for (path, fn, kind), n in cpu.HITS.items() if fn == "get_default_causal_mask")
    assert after >= before  # lru-cached: counted on first call only


def test_type_name_is_spoofed_only_at_listed_sites():
    assert torch.zeros(1).type() == "torch.FloatTensor"  # everywhere else: torch's answer


def test_rng_tracker_forks_a_separate_cpu_stream():
    from megatron.core import tensor_parallel

    tracker = tensor_parallel.get_cuda_rng_tracker()
    tracker.reset()
    tracker.add("stream-a", 123)
    torch.manual_seed(0)
    outside_before = torch.get_rng_state()
    with tracker.fork("stream-a"):
        first = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), outside_before)  # default stream untouched
    with tracker.fork("stream-a"):
        second = torch.rand(3)
    assert not torch.equal(first, second)  # the forked stream advances
    expected = torch.Generator().manual_seed(123)
    assert torch.equal(torch.cat([first, second]), torch.rand(6, generator=expected))
