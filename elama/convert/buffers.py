"""Reused tensor buffers for the streaming converters: a tensor of a given shape that lives in
the same memory every time it is asked for again, so a conversion touches fresh pages once, not
once per tensor. glibc hands every allocation above 32 MB a fresh mmap and unmaps it on free, and
faulting in a fresh 500 MB tensor costs about as much as reading it from the page cache.

Each buffer is exactly the size of what it holds: torch.save writes a tensor's whole storage,
and torch.distributed.checkpoint clones a tensor whose storage is larger than the tensor.
"""
from __future__ import annotations

import math

import torch


class BufferPool:
    """take(shape, dtype, slot) -> a tensor over the pool's buffer of that byte size and slot.

    Two tensors alive at once need different slots (or sizes): a take() of the same size and
    slot reuses, and so overwrites, the memory handed out before."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, int], torch.Tensor] = {}

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, slot: int = 0) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        buf = self._buffers.get((nbytes, slot))
        if buf is None:
            buf = self._buffers[(nbytes, slot)] = torch.empty(nbytes, dtype=torch.uint8)
        return buf.view(dtype).view(shape)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self._buffers.values())
