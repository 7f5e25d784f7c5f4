"""SDPA core attention against megatron-core's local DotProductAttention: the module alone
(causal, GQA, a packed block mask, gradients) and a whole GPTModel built from either spec."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from elama.config import load_config
from elama.model import llama
from elama.model.attention import SDPAttention
from elama.parallel import setup
from elama.parallel.dims import ParallelDims

DIMS = ParallelDims(tp=1, pp=1, vpp=1, cp=1, dp=1, world_size=1)


@pytest.fixture(scope="module")
def single_process():
    setup.init_single_process()
    yield
    setup.destroy_distributed()


def _model_config(core_attention: str, **extra):
    m = load_config(["model=tiny", "model.precision=fp32", "model.vocab_size=256",
                     "model.num_attention_heads=8", "model.num_query_groups=4",
                     "model.hidden_size=128", "model.num_layers=2"]).model
    return dataclasses.replace(m, core_attention=core_attention, **extra)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _pair(single_process):
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    m = _model_config("sdpa")
    tc = llama.transformer_config(m, DIMS, device="cpu")
    args = dict(config=tc, layer_number=1, attn_mask_type=AttnMaskType.causal,
                attention_type="self")
    return DotProductAttention(**args), SDPAttention(**args), m


def _qkv(s=24, b=2, heads=8, groups=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, b, n, d, generator=g, requires_grad=True)
            for n in (heads, groups, groups)]


@pytest.mark.parametrize("masked", [False, True], ids=["causal", "block_mask"])
def test_module_matches_megatron_local_attention(single_process, masked):
    ref_mod, sdpa_mod, _ = _pair(single_process)
    mask = None
    if masked:  # two packed examples per row, as elama.data.sft.packing builds them
        from elama.data.sft.packing import block_causal_mask

        segments = torch.tensor([[0] * 10 + [1] * 14, [0] * 5 + [1] * 19])
        mask = block_causal_mask(segments)
    outs, grads = [], []
    for mod in (ref_mod, sdpa_mod):
        q, k, v = _qkv()
        out = mod(q, k, v, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad for t in (q, k, v)])
    assert outs[1].shape == outs[0].shape == (24, 2, 128)
    assert _rel(outs[1], outs[0]) < 1e-6
    for name, got, want in zip("qkv", grads[1], grads[0]):
        assert _rel(got, want) < 1e-5, name
    # the mask matters: the causal and masked outputs differ
    if masked:
        q, k, v = _qkv()
        assert _rel(sdpa_mod(q, k, v, None).detach(), outs[1]) > 1e-2


def _gpt(core_attention: str):
    m = _model_config(core_attention)
    tc = llama.transformer_config(m, DIMS, device="cpu")
    torch.manual_seed(0)
    return llama.build_gpt_model(m, tc, DIMS, pre_process=True, post_process=True,
                                 vp_stage=None, pp_rank=0)


def test_gpt_model_matches_megatron_local_spec(single_process):
    ref, sdpa = _gpt("megatron"), _gpt("sdpa")
    assert type(sdpa.decoder.layers[0].self_attention.core_attention) is SDPAttention
    assert type(ref.decoder.layers[0].self_attention.core_attention) is not SDPAttention
    sdpa.load_state_dict(ref.state_dict())  # no parameters of its own: the same checkpoint keys
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    labels = torch.roll(tokens, -1, dims=1)
    losses = []
    for model in (ref, sdpa):
        loss = model(tokens, None, None, labels=labels)
        loss.sum().backward()
        losses.append(loss.detach())
    assert _rel(losses[1], losses[0]) < 1e-6
    ref_grads = dict(ref.named_parameters())
    for name, p in sdpa.named_parameters():
        assert _rel(p.grad, ref_grads[name].grad) < 1e-5, name


def test_refuses_what_it_does_not_implement(single_process):
    from megatron.core.transformer.enums import AttnMaskType

    m = _model_config("sdpa")
    tc = llama.transformer_config(m, DIMS, device="cpu")
    tc.softmax_type = "off-by-one"
    with pytest.raises(ValueError, match="softmax_type='off-by-one'.*model.core_attention="
                                         "megatron"):
        SDPAttention(tc, 1, AttnMaskType.causal, "self")


def test_config_flags_reach_the_spec():
    assert llama.layer_spec(_model_config("sdpa")).submodules.self_attention.submodules \
        .core_attention is SDPAttention
    assert llama.layer_spec(_model_config("megatron")).submodules.self_attention.submodules \
        .core_attention is not SDPAttention
    kw = llama.transformer_config_kwargs(_model_config("sdpa", swiglu_fusion=True), DIMS,
                                         device="cpu")
    assert kw["bias_activation_fusion"] and kw["gated_linear_unit"]
    bad = load_config(["model=tiny", "model.core_attention=flash"])
    from elama.config import validate

    with pytest.raises(ValueError, match="model.core_attention"):
        validate(bad, 1)
