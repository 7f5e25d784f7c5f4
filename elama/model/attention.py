"""Core attention for the local layer spec on torch's scaled_dot_product_attention: causal (or an
explicit block mask for packed SFT batches), grouped-query heads without materialised repeats.

megatron-core's local DotProductAttention computes scores into a shared buffer, masks them with an
in-place masked_fill_ on a view and repeats K/V per query head; its backward then copies the
score tensors (~95 ms per step on the body-heavy benchmark model, measured). SDPA does the same
math in one op with a fused backward. Same interface and numbers (tests/unit/test_attention.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.utils import divide


class SDPAttention(MegatronModule):
    """Drop-in for megatron-core's DotProductAttention in a layer spec (same constructor and
    forward). Inputs [s, b, heads, head_dim]; output [s, b, heads * head_dim]."""

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: float | None = None,
                 softmax_scale: float | None = None, cp_comm_type: str | None = None,
                 pg_collection=None):
        super().__init__(config=config)
        unsupported = [name for name, bad in (
            ("context_parallel_size > 1", config.context_parallel_size > 1),
            ("apply_query_key_layer_scaling", config.apply_query_key_layer_scaling),
            (f"softmax_type={config.softmax_type!r}", config.softmax_type != "vanilla"),
        ) if bad]
        if unsupported:
            raise ValueError(f"SDPA core attention does not support {', '.join(unsupported)}: "
                             "set model.core_attention=megatron")
        if pg_collection is None:  # as megatron's DotProductAttention: the global tp group
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp = pg_collection.tp.size()
        self.heads = divide(config.num_attention_heads, tp)
        self.groups = divide(config.num_query_groups, tp)
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None \
            else attention_dropout
        self.softmax_scale = softmax_scale if softmax_scale is not None \
            else 1.0 / math.sqrt(config.kv_channels)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPA core attention takes neither packed_seq_params nor an "
                             "attention bias; use Transformer Engine (model.transformer_impl=te)")
        s, b = query.shape[0], query.shape[1]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
        mask_type = attn_mask_type or self.attn_mask_type
        # megatron's masks are True where attention is NOT allowed; SDPA's bool masks the reverse
        mask = None if attention_mask is None else ~attention_mask
        causal = mask is None and mask_type == AttnMaskType.causal
        dropout = self.dropout_p if self.training else 0.0
        if dropout > 0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():  # as megatron's own attention
                out = self._sdpa(q, k, v, mask, causal, dropout)
        else:
            out = self._sdpa(q, k, v, mask, causal, dropout)
        return out.permute(2, 0, 1, 3).reshape(s, b, self.heads * q.shape[-1])

    def _sdpa(self, q, k, v, mask, causal: bool, dropout: float) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                              is_causal=causal, scale=self.softmax_scale,
                                              enable_gqa=self.groups != self.heads)
