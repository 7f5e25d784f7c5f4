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


def test_weight_gradient_accumulates_into_main_grad():
    """gradient_accumulation_fusion on CPU: megatron's linear backward adds the weight gradient
    into main_grad (DDP's buffer) through the CPU kernel, and gives the same gradients."""
    from megatron.core.tensor_parallel import layers

    torch.manual_seed(0)
    x = torch.randn(6, 2, 8, requires_grad=True)
    w = torch.randn(4, 8, requires_grad=True)
    w.main_grad, w.grad_added_to_main_grad = torch.full((4, 8), 0.5), False
    out = layers.LinearWithGradAccumulationAndAsyncCommunication.apply(
        x, w, None, True, False, False, None, None, None)
    out.square().sum().backward()
    ref_x, ref_w = (t.detach().clone().requires_grad_() for t in (x, w))
    torch.nn.functional.linear(ref_x, ref_w).square().sum().backward()
    assert w.grad_added_to_main_grad
    torch.testing.assert_close(w.main_grad, 0.5 + ref_w.grad)
    torch.testing.assert_close(x.grad, ref_x.grad)
