"""Seeded synthetic token batches for smoke runs, tests and benchmarks (data.source=synthetic).

Sequences follow a learnable rule (arithmetic progressions modulo a small range) so the loss
falls; sample i is a pure function of (seed, i), so any layout sees the same global batch.
"""
from __future__ import annotations

from typing import Iterator

import torch


def synthetic_sample(seed: int, index: int, seq_len_tokens: int, vocab_size: int) -> torch.Tensor:
    """seq_len_tokens + 1 token ids (inputs and shifted labels) of global sample `index`."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    span = min(vocab_size, 1024)
    start = int(torch.randint(span, (1,), generator=g))
    stride = int(torch.randint(1, 8, (1,), generator=g))
    return (start + stride * torch.arange(seq_len_tokens + 1)) % span


def synthetic_microbatches(*, seed: int, seq_len_tokens: int, vocab_size: int,
                           micro_batch_size: int, dp_rank: int, dp: int,
                           start_sample: int = 0) -> Iterator[dict]:
    """Microbatches for one data-parallel rank, in megatron's sampler order: each group of
    micro_batch_size * dp consecutive samples is split by dp rank."""
    index = start_sample
    while True:
        first = index + dp_rank * micro_batch_size
        rows = [synthetic_sample(seed, first + j, seq_len_tokens, vocab_size)
                for j in range(micro_batch_size)]
        data = torch.stack(rows)
        yield {"tokens": data[:, :-1].contiguous(), "labels": data[:, 1:].contiguous(),
               "loss_mask": torch.ones(micro_batch_size, seq_len_tokens)}
        index += micro_batch_size * dp
