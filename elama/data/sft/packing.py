"""Packing of instruction examples into fixed-length sequences: which examples share a sequence
(first fit), the sample tensors (labels and loss mask shifted within each example, positions
restarting per example), and what keeps examples apart in attention: an explicit block-diagonal
causal mask for the local spec (CPU), or the cu_seqlens of Transformer Engine's packed THD path.

With one example per sequence the same builder gives the padded (unpacked) layout.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

PAD_SEGMENT = -1


def first_fit(lengths: Sequence[int], seq_len_tokens: int) -> list[list[int]]:
    """Example indices per sequence: each example goes into the first open sequence with room,
    in example order (deterministic; a length-skewed set fills ~all of each sequence)."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i, n in enumerate(lengths):
        if n > seq_len_tokens:
            raise ValueError(f"example {i} has {n} tokens > seq_len_tokens={seq_len_tokens}: "
                             "tokenize with --max-seq-len at most data.seq_len_tokens")
        for b, room in enumerate(free):
            if n <= room:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(seq_len_tokens - n)
    return bins


def build_sample(examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len_tokens: int,
                 pad_id: int) -> dict:
    """One training sequence from (ids, answer mask) examples laid end to end, then padding.

    labels[i] is the next token of the same example and loss_mask[i] says whether that token is
    an answer token; the last token of an example predicts nothing (no loss across examples).
    segment_ids number the examples (padding: -1); position_ids restart at 0 in each."""
    tokens = np.full(seq_len_tokens, pad_id, dtype=np.int64)
    labels = np.full(seq_len_tokens, pad_id, dtype=np.int64)
    loss_mask = np.zeros(seq_len_tokens, dtype=np.float32)
    position_ids = np.zeros(seq_len_tokens, dtype=np.int64)
    segment_ids = np.full(seq_len_tokens, PAD_SEGMENT, dtype=np.int64)
    pos = 0
    for k, (ids, mask) in enumerate(examples):
        n = len(ids)
        if pos + n > seq_len_tokens:
            raise ValueError(f"examples of {sum(len(e[0]) for e in examples)} tokens do not fit "
                             f"seq_len_tokens={seq_len_tokens}")
        tokens[pos:pos + n] = ids
        labels[pos:pos + n - 1] = ids[1:]
        loss_mask[pos:pos + n - 1] = mask[1:]
        position_ids[pos:pos + n] = np.arange(n)
        segment_ids[pos:pos + n] = k
        pos += n
    position_ids[pos:] = np.arange(seq_len_tokens - pos)
    return {"tokens": torch.from_numpy(tokens), "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask), "position_ids": torch.from_numpy(position_ids),
            "segment_ids": torch.from_numpy(segment_ids)}


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] boolean attention mask in megatron's convention (True = masked out): a query
    sees keys of its own example at or before it. Padding attends within the padding run, so no
    row is fully masked."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    s = segment_ids.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool, device=segment_ids.device).tril()
    return ~(same & causal)[:, None]


def cu_seqlens(segment_ids: torch.Tensor) -> torch.Tensor:
    """int32 cumulative lengths of the segments of one sequence (padding is a last segment),
    as Transformer Engine's THD attention takes them: [0, n0, n0 + n1, ..., s]."""
    if segment_ids.dim() != 1:
        raise ValueError("THD packing takes one sequence per microbatch (train.micro_batch_size=1)")
    change = torch.nonzero(segment_ids[1:] != segment_ids[:-1]).flatten() + 1
    bounds = [0, *change.tolist(), segment_ids.numel()]
    return torch.tensor(bounds, dtype=torch.int32, device=segment_ids.device)


def build_packed_seq_params(segment_ids: torch.Tensor):
    """megatron-core's PackedSeqParams for the THD path (TE attention and RoPE restart at each
    cu_seqlens boundary); the microbatch's tokens are then read as one [1, s] sequence."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = cu_seqlens(segment_ids.reshape(-1))
    max_len = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                           cu_seqlens_q_padded=cu, cu_seqlens_kv_padded=cu,
                           max_seqlen_q=max_len, max_seqlen_kv=max_len)
