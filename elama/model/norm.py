"""RMSNorm for the local (non-TE) layer spec, with sequence-parallel support.

megatron-core's local spec wraps torch.nn.RMSNorm and refuses sequence parallelism (that gap is the
local spec's, not the CPU's: megatron expects apex or TE norms). This norm marks its weight
`sequence_parallel` so finalize_model_grads all-reduces its gradient across the tp group, as TE's
norms do, and normalises in float32 like Hugging Face's LlamaRMSNorm (the reference for parity).
"""
from __future__ import annotations

import torch


class RMSNorm(torch.nn.Module):
    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **unused):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        # Each tp rank sees a slice of the sequence, so each holds a partial gradient.
        setattr(self.weight, "sequence_parallel", bool(config.sequence_parallel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)
