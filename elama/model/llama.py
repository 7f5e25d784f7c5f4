"""Llama 3.1 on megatron-core: the one translation of ModelConfig into TransformerConfig, the layer
specs (Transformer Engine on GPU, local on CPU), GPTModel chunks, and parameter/FLOP counts.

Presets (architecture only) live in conf/model/*.yaml; the implementation (te/local), precision and
recompute are chosen per run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_decoder_block_spec,
    get_gpt_layer_local_spec,
)
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from elama.config import ModelConfig
from elama.model.attention import SDPAttention
from elama.model.norm import RMSNorm
from elama.parallel.dims import ParallelDims

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.bfloat16}


def transformer_config_kwargs(m: ModelConfig, dims: ParallelDims, *, device: str,
                              ddp: bool = False) -> dict:
    """Keyword arguments of megatron-core's TransformerConfig for this model, layout and device.
    ddp: the model will be wrapped in megatron's DDP (parallelize_llama), whose main_grad buffers
    the CPU wgrad accumulation writes into; a bare model (scoring, meta-device plans) has none.

    Kept apart from the constructor so that the GPU configuration (fusions, FP8) can be checked on
    a machine without Transformer Engine, whose presence TransformerConfig checks on construction.
    """
    gpu, te = device == "cuda", m.transformer_impl == "te"
    dtype = DTYPES[m.precision]
    kwargs = dict(
        num_layers=m.num_layers, hidden_size=m.hidden_size, ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads, num_query_groups=m.num_query_groups,
        kv_channels=m.head_dim, normalization="RMSNorm", layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True, activation_func=F.silu,  # SwiGLU
        add_bias_linear=False, add_qkv_bias=False,
        attention_dropout=m.attention_dropout, hidden_dropout=m.hidden_dropout,
        init_method_std=m.init_method_std,
        tensor_model_parallel_size=dims.tp, pipeline_model_parallel_size=dims.pp,
        virtual_pipeline_model_parallel_size=dims.vpp if dims.vpp > 1 else None,
        context_parallel_size=dims.cp, sequence_parallel=dims.sequence_parallel,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=m.precision != "fp32",
        # Loss is summed per microbatch and divided by the global token count in
        # finalize_model_grads: the same gradient for any split of the batch.
        calculate_per_token_loss=True,
        use_cpu_initialization=not gpu,
        deallocate_pipeline_outputs=True,
        transformer_impl="transformer_engine" if te else "local",
        attention_backend=AttnBackend.auto if te else AttnBackend.local,
        # Fused kernels exist only on GPU (TE or megatron's jit fusions).
        # SwiGLU fused: megatron's bias_swiglu (torch.compile'd on CPU, opt-in: compile time)
        bias_activation_fusion=gpu or m.swiglu_fusion, bias_dropout_fusion=gpu, apply_rope_fusion=gpu and te,
        # wgrad GEMMs accumulate into DDP's main_grad: TE's kernel on GPU, addmm_ on CPU (cpu.py)
        gradient_accumulation_fusion=(gpu and te) or (not gpu and ddp), masked_softmax_fusion=False,
        cross_entropy_loss_fusion=gpu, persist_layer_norm=False,
        # megatron-core 0.16.1 defaults to the deprecated "full" scope and warns per rank; [] is
        # its new spelling of the same (whole-layer) scope. CUDA graphs stay off either way.
        cuda_graph_scope=[],
    )
    if m.recompute != "none":
        kwargs["recompute_granularity"] = m.recompute
    if m.recompute == "full":
        kwargs.update(recompute_method=m.recompute_method,
                      recompute_num_layers=m.recompute_num_layers)
    if m.precision == "fp8":
        kwargs.update(fp8=m.fp8_format, fp8_recipe=m.fp8_recipe, fp8_margin=m.fp8_margin,
                      fp8_amax_history_len=m.fp8_amax_history_len,
                      fp8_amax_compute_algo=m.fp8_amax_compute_algo)
    return kwargs


def transformer_config(m: ModelConfig, dims: ParallelDims, *, device: str,
                       ddp: bool = False) -> TransformerConfig:
    return TransformerConfig(**transformer_config_kwargs(m, dims, device=device, ddp=ddp))


def layer_spec(m: ModelConfig):
    """Spec of one Llama decoder layer: TE modules (fused norm+linear, FP8) or megatron-core's
    local modules with our sequence-parallel-capable RMSNorm and (model.core_attention=sdpa)
    SDPA core attention."""
    if m.transformer_impl == "te":
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        return get_gpt_layer_with_transformer_engine_spec()
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    if m.core_attention == "sdpa":
        spec.submodules.self_attention.submodules.core_attention = SDPAttention
    spec.submodules.input_layernorm = RMSNorm
    spec.submodules.pre_mlp_layernorm = RMSNorm
    return spec


def block_spec(m: ModelConfig, tc: TransformerConfig, dims: ParallelDims, *,
               vp_stage: int | None, pp_rank: int) -> TransformerBlockSubmodules:
    """Layers of one model chunk plus the final norm (used on the last stage only)."""
    if m.transformer_impl == "te":
        return get_gpt_decoder_block_spec(tc, use_transformer_engine=True,
                                          normalization="RMSNorm", vp_stage=vp_stage,
                                          pp_rank=pp_rank)
    layers = dims.layers_per_chunk(m.num_layers)
    return TransformerBlockSubmodules(layer_specs=[layer_spec(m)] * layers, layer_norm=RMSNorm)


def build_gpt_model(m: ModelConfig, tc: TransformerConfig, dims: ParallelDims, *,
                    pre_process: bool, post_process: bool, vp_stage: int | None,
                    pp_rank: int) -> GPTModel:
    return GPTModel(
        config=tc,
        transformer_layer_spec=block_spec(m, tc, dims, vp_stage=vp_stage, pp_rank=pp_rank),
        vocab_size=m.vocab_size,
        max_sequence_length=m.max_seq_len_tokens,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,  # logits stay vocab-sharded; the loss is vocab-parallel
        share_embeddings_and_output_weights=m.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=m.rotary_base,
        rope_scaling=m.rope_scaling,
        rope_scaling_factor=m.rope_scaling_factor,
        vp_stage=vp_stage,
    )


@dataclass(frozen=True)
class ParamCounts:
    total: int
    """Parameters of the whole model (as Hugging Face counts them)."""
    per_stage: tuple[int, ...]
    """Parameters held by one tensor-parallel rank of each pipeline stage."""
    embedding: int
    """Input embedding parameters (not matmul FLOPs)."""
    matmul: int
    """Parameters that take part in matmuls (linear layers and the output layer)."""

    @property
    def max_per_rank(self) -> int:
        return max(self.per_stage)


def count_parameters(m: ModelConfig, dims: ParallelDims) -> ParamCounts:
    """Count from megatron-core's real modules, built full-size on the meta device.

    Needs megatron's process groups at tp=pp=1 (elama.parallel.setup.init_single_process). Per-rank
    counts divide what megatron marks tensor-parallel by tp and place layers on pipeline stages
    in megatron's interleaved order.
    """
    single = ParallelDims(tp=1, pp=1, vpp=1, cp=1, dp=1, world_size=1)
    meta_cfg = dataclasses.replace(m, transformer_impl="local", precision="fp32")
    # Initialisation on meta costs nothing, and megatron sets the tensor-parallel attributes only
    # while initialising (perform_initialization=False leaves them unset).
    tc = transformer_config(meta_cfg, single, device="cpu")
    with torch.device("meta"):
        model = build_gpt_model(meta_cfg, tc, single, pre_process=True, post_process=True,
                                vp_stage=None, pp_rank=0)
    total = embedding = norms = 0
    per_stage = [0] * dims.pp
    for name, p in model.named_parameters():
        total += p.numel()
        local = p.numel() // dims.tp if getattr(p, "tensor_model_parallel", False) else p.numel()
        if name.startswith("decoder.layers."):
            per_stage[dims.stage_of_layer(int(name.split(".")[2]), m.num_layers)] += local
        elif name.startswith("embedding."):
            per_stage[0] += local
            embedding += p.numel()
        else:  # final norm and output layer
            per_stage[-1] += local
        if p.dim() == 1:
            norms += p.numel()
    return ParamCounts(total=total, per_stage=tuple(per_stage), embedding=embedding,
                       matmul=total - embedding - norms)


def matmul_params(m: ModelConfig) -> int:
    """Matmul parameters from the architecture (checked against count_parameters in tests)."""
    q = m.num_attention_heads * m.head_dim
    kv = 2 * m.num_query_groups * m.head_dim
    per_layer = m.hidden_size * (q + kv) + q * m.hidden_size + 3 * m.hidden_size * m.ffn_hidden_size
    return m.num_layers * per_layer + m.vocab_size * m.hidden_size


def flops_per_token(m: ModelConfig, seq_len_tokens: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6 per matmul parameter plus
    causal attention scores and values, 2 * 2 * L * s * d_attn / 2 per token forward."""
    attention = 2 * m.num_layers * seq_len_tokens * m.num_attention_heads * m.head_dim
    return 6.0 * matmul_params(m) + 3.0 * attention
