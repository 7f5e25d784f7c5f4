"""The Llama 3.1 presets built from megatron-core's real modules (meta device), the translation
to TransformerConfig for CPU and GPU, and the FLOP count."""
from __future__ import annotations

import pytest

from elama.config import load_config
from elama.model import llama
from elama.parallel import setup
from elama.parallel.dims import ParallelDims


@pytest.fixture(scope="module")
def single_process():
    setup.init_single_process()
    yield
    setup.destroy_distributed()


def _dims(tp=1, pp=1, vpp=1):
    return ParallelDims(tp=tp, pp=pp, vpp=vpp, cp=1, dp=1, world_size=tp * pp)


@pytest.mark.parametrize("preset,total", [("llama3.1-8b", 8_030_261_248),
                                          ("llama3.1-70b", 70_553_706_496)])
def test_presets_count_exactly_as_hugging_face(preset, total, single_process):
    m = load_config([f"model={preset}"]).model
    counts = llama.count_parameters(m, _dims())
    assert counts.total == total
    assert counts.matmul == llama.matmul_params(m)  # the FLOP formula sees the same shapes


def test_per_rank_counts_split_by_tp_and_stage(single_process):
    m = load_config(["model=llama3.1-70b"]).model
    full = llama.count_parameters(m, _dims())
    split = llama.count_parameters(m, _dims(tp=8, pp=4))
    assert len(split.per_stage) == 4
    embed = m.vocab_size * m.hidden_size
    # stage 0: embedding + 20 layers, stage 3: 20 layers + final norm + output layer
    layer = (full.total - 2 * embed - m.hidden_size) // 80
    norms = 2 * m.hidden_size  # replicated, not split by tp
    per_layer_rank = (layer - norms) // 8 + norms
    assert split.per_stage[1] == 20 * per_layer_rank
    assert split.per_stage[0] == embed // 8 + 20 * per_layer_rank
    assert split.per_stage[3] == embed // 8 + 20 * per_layer_rank + m.hidden_size


def test_cpu_translation_uses_local_spec_and_no_fusions():
    m = load_config(["model=tiny", "model.precision=fp32"]).model
    kw = llama.transformer_config_kwargs(m, _dims(tp=2), device="cpu")
    assert kw["transformer_impl"] == "local" and kw["use_cpu_initialization"]
    assert not any(kw[k] for k in ("bias_activation_fusion", "apply_rope_fusion",
                                   "masked_softmax_fusion"))
    assert not kw["gradient_accumulation_fusion"]  # a bare model has no DDP main_grad
    assert llama.transformer_config_kwargs(m, _dims(tp=2), device="cpu", ddp=True)[
        "gradient_accumulation_fusion"]  # wrapped: the CPU layer's addmm_ kernel (test_cpu_layer)
    assert kw["gated_linear_unit"] and kw["normalization"] == "RMSNorm"
    assert kw["calculate_per_token_loss"] and kw["num_query_groups"] == 2
    spec = llama.layer_spec(m)
    assert spec.submodules.input_layernorm.__name__ == "RMSNorm"


def test_gpu_translation_selects_te_and_fp8_recipe():
    m = load_config(["model=llama3.1-8b", "model.transformer_impl=te", "model.precision=fp8",
                     "model.fp8_recipe=tensorwise", "model.recompute=selective"]).model
    kw = llama.transformer_config_kwargs(m, _dims(tp=4), device="cuda")
    assert kw["transformer_impl"] == "transformer_engine"
    assert (kw["fp8"], kw["fp8_recipe"], kw["bf16"]) == ("hybrid", "tensorwise", True)
    assert kw["apply_rope_fusion"] and kw["gradient_accumulation_fusion"]
    assert kw["recompute_granularity"] == "selective"
    assert not kw["use_cpu_initialization"]


def test_flops_per_token_matches_6n_plus_attention():
    m = load_config(["model=llama3.1-8b"]).model
    n = llama.matmul_params(m)
    seq = 8192
    attention = 3 * 2 * m.num_layers * seq * m.num_attention_heads * m.head_dim
    assert llama.flops_per_token(m, seq) == 6 * n + attention
    # ~ 6 * 7.5e9 + 6 * 32 * 8192 * 4096 ≈ 5.1e10 FLOPs per token
    assert 5.0e10 < llama.flops_per_token(m, seq) < 5.3e10
