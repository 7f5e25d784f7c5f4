"""One tensor of a merge, streamed in row blocks whatever the method: memory stays at a few
blocks, not copies of the tensor. SLERP reads the tensor twice (its angle, then the output), TIES
up to three times (an exact radix select of each task vector's magnitude threshold over two
passes, then the output). Every block of every input is checked finite, naming the tensor.
Blocks are computed in float32 chunks by in-place kernels; elama.merge's whole-tensor kernels are
the reference they equal bitwise (SLERP: to float32 rounding of its angle's dot products)."""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

READ_BLOCK_BYTES = 16 << 20  # rows read per input at a time
# Elements per compute chunk: large enough that torch's per-operation overhead is small against
# the work, small enough to stay near the cache. Measured for a linear merge of one 16 MB bf16
# block, one thread: 64K elements 26 ms, 256K 15 ms, 1M 15 ms, 4M 19 ms.
COMPUTE_CHUNK_ELEMS = 1 << 20
_BINS = 1 << 16


class NonFiniteInput(ValueError):
    """A merge input holding NaN or inf."""


def scratch(bufs: dict, slot, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A view of the reused byte buffer bufs[slot], grown if needed. Reuse matters: a fresh
    allocation page-faults on every block, which costs more than reading page-cached data."""
    nbytes = math.prod(shape) * dtype.itemsize
    if slot not in bufs or bufs[slot].numel() < nbytes:
        bufs[slot] = torch.empty(nbytes, dtype=torch.uint8)
    return bufs[slot][:nbytes].view(dtype).view(shape)


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or inf in t. A sum is finite only if every term is (NaN and inf propagate; a
    finite sum of non-finite terms cannot happen), so the exact test runs only when the sum is
    not finite (a NaN, an inf, or an overflow of large finite values). Measured: the sum is ~50x
    faster than isfinite(t).all() on bfloat16, which was most of a merge's time."""
    if not t.dtype.is_floating_point or bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def blocks(name: str, readers: Sequence, bufs: dict) -> Iterator[tuple[int, tuple, list]]:
    """(first row, block shape, flat inputs) of each row block of `name` in every reader. The
    next block is read (and checked finite) by a second thread while the caller computes on
    this one: reads and the caller's compute and writes overlap (two buffers per input)."""
    meta = readers[0].meta(name)
    rows_per_block = max(1, READ_BLOCK_BYTES // max(meta.row_bytes, 1))
    starts = range(0, meta.rows, rows_per_block)

    def load(j: int) -> tuple[int, tuple, list]:
        r0 = starts[j]
        shape = (min(rows_per_block, meta.rows - r0), *meta.shape[1:])
        ins = []
        for i, r in enumerate(readers):
            block = r.read_rows_into(name, r0, scratch(bufs, ("in", j % 2, i), shape,
                                                       r.meta(name).dtype))
            if not all_finite(block):
                raise NonFiniteInput(f"tensor {name} of {r.path} holds NaN or inf (rows {r0} to "
                                     f"{r0 + shape[0] - 1}): nothing was written; repair or "
                                     "leave out that checkpoint")
            ins.append(block.view(-1))
        return r0, shape, ins

    if len(starts) == 1:  # one block: nothing to overlap
        yield load(0)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="merge-read") as pool:
        pending = pool.submit(load, 0)
        for j in range(len(starts)):
            block = pending.result()
            if j + 1 < len(starts):
                pending = pool.submit(load, j + 1)
            yield block


def chunks(ins: Sequence[torch.Tensor], bufs: dict) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset, work) of each compute chunk: work is (inputs, chunk), float32 copies of the flat
    inputs (base first) in one reused buffer, which the caller may overwrite (the block kernels
    work in place: no fresh float32 temporaries per chunk)."""
    n = ins[0].numel()
    for c in range(0, n, COMPUTE_CHUNK_ELEMS):
        size = min(COMPUTE_CHUNK_ELEMS, n - c)
        work = scratch(bufs, "f32", (len(ins), size), torch.float32)
        for row, t in zip(work, ins):
            row.copy_(t[c:c + size])
        yield c, work


_DOT_BLOCK = 1024


def slerp_dots(name: str, readers: Sequence, bufs: dict) -> tuple[float, float, float]:
    """(base.base, model.model, base.model) of the flattened tensor: float32 dot products of
    1024-element pieces (one batched GEMM per chunk) summed in float64. Converting every chunk
    to float64 cost 4x as much; a piece's float32 rounding (~1e-7 of its value) is far below
    what moves the SLERP angle."""
    acc = torch.zeros(2, 2, dtype=torch.float64)
    for _, _, ins in blocks(name, readers, bufs):
        for _, pair in chunks(ins, bufs):
            size = pair.shape[1]
            if size % _DOT_BLOCK:  # a chunk that does not divide into pieces: in float64
                wide = pair.double()
                acc += wide @ wide.T
                continue
            pieces = pair.view(2, size // _DOT_BLOCK, _DOT_BLOCK).transpose(0, 1)
            acc += torch.bmm(pieces, pieces.transpose(1, 2)).sum(0, dtype=torch.float64)
    return acc[0, 0].item(), acc[1, 1].item(), acc[0, 1].item()


def ties_thresholds(name: str, readers: Sequence, bufs: dict, density: float) -> list:
    """Per model, the magnitude of its task vector's ceil(density*n)-th largest entry (what
    trim_to_density keeps entries >= to), exactly, in two passes of 65536-bin histograms over
    the high then the low 16 bits of |tau| as int32 (for non-negative float32 the bit patterns'
    order is the values' order); None where everything is kept."""
    n = readers[0].meta(name).numel
    k = math.ceil(density * n)
    models = len(readers) - 1
    if k >= n:
        return [None] * models

    def histogram(select: Callable) -> list[torch.Tensor]:
        """Counts of select(model, bits) in bins 0..65535; select works in place on a scratch
        copy and puts what it does not count in bin 65536. In place on int32, because an int64
        copy (or a boolean mask) costs more than the count."""
        hist = [torch.zeros(_BINS + 1, dtype=torch.int64) for _ in range(models)]
        for _, _, ins in blocks(name, readers, bufs):
            for _, work in chunks(ins, bufs):
                bits = work[1:].sub_(work[0]).abs_().view(torch.int32)
                for i, row in enumerate(bits):
                    hist[i] += torch.bincount(select(i, row), minlength=_BINS + 1)
        return [h[:_BINS] for h in hist]

    high = histogram(lambda i, bits: bits.bitwise_right_shift_(16))
    found = [_bin_of_kth_largest(h, k) for h in high]  # (bin, rank left within the bin)
    # x ^ (bin << 16) is x's low 16 bits where x's high bits are the bin, else >= 65536.
    low = histogram(lambda i, bits: bits.bitwise_xor_(found[i][0] << 16).clamp_(max=_BINS))
    out = []
    for (hi, left), h in zip(found, low):
        lo, _ = _bin_of_kth_largest(h, left)
        out.append(torch.tensor([(hi << 16) | lo], dtype=torch.int32).view(torch.float32).item())
    return out


def _bin_of_kth_largest(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest value and that value's rank from the top within it."""
    above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # count in bins >= i
    b = int(torch.nonzero(above >= k).max())
    return b, k - (int(above[b + 1]) if b + 1 < _BINS else 0)


# Block kernels: fn(base, models) on float32 chunk copies that they may overwrite, returning the
# float32 result (often base's buffer). Each performs the same float32 operations in the same
# order as its whole-tensor reference in elama.merge, so streamed and whole outputs are bitwise
# equal; working in place keeps a chunk's compute at a few sweeps over cached memory.

def linear_kernel(alpha: float) -> Callable:
    """merge_linear: (1-alpha)*base + alpha*model."""
    return lambda b, ms: b.mul_(1.0 - alpha).add_(ms[0], alpha=alpha)


def weighted_kernel(s0: float, s1: float) -> Callable:
    """SLERP with its coefficients known: s0*base + s1*model."""
    return lambda b, ms: b.mul_(s0).add_(ms[0], alpha=s1)


def task_arithmetic_kernel(weights: Sequence[float], alpha: float) -> Callable:
    """merge_task_arithmetic: base + alpha*w_i*(model_i - base), added in model order."""
    def kernel(b: torch.Tensor, ms: torch.Tensor) -> torch.Tensor:
        taus = ms.sub_(b)  # every task vector before the base is changed
        for tau, w in zip(taus, weights):
            b.add_(tau, alpha=alpha * w)
        return b
    return kernel


def ties_kernel(thresholds: Sequence, weights: Sequence[float], alpha: float, bufs: dict) -> Callable:
    """merge_ties on a chunk, its masks rewritten as equal float32 operations (a boolean mask or
    masked_fill costs 5-15x an arithmetic sweep here):
    - trim: hardshrink(tau, the float32 below the threshold) keeps |tau| >= threshold, else +0;
    - an entry agrees with the elected sign s (-1, 0 or 1) iff tau*s > 0 (nonzero, same sign;
      none agrees where s is 0), a 1.0/0.0 mask;
    - sums over the models run in order from +0, as torch's sum over dim 0 does, so signed
      zeros come out the same; the agreeing count is a float32 sum of 1.0s (exact small
      integers, the float32 the reference's integer count is divided as)."""
    f32 = dict(dtype=torch.float32)  # the float32 neighbour, whatever torch's default dtype
    shrink = [None if t is None or t == 0.0 else
              float(torch.tensor(t, **f32).nextafter(torch.tensor(0.0, **f32))) for t in thresholds]

    if len(weights) == 1:
        return _ties_one_kernel(shrink[0], weights[0], alpha)

    def over_models(rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        torch.add(rows[0], 0.0, out=out)  # +0 + x: -0 becomes +0, as in torch's sum
        for row in rows[1:]:
            out.add_(row)
        return out

    def kernel(b: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
        taus.sub_(b)
        for tau, w, lambd in zip(taus, weights, shrink):
            if lambd is not None:
                torch.hardshrink(tau, lambd, out=tau)
            if w != 1.0:  # x*1.0 is x exactly
                tau.mul_(w)
        work = scratch(bufs, "ties", taus.shape, torch.float32)
        sums = scratch(bufs, "ties_sums", (2, b.numel()), torch.float32)
        sign = over_models(taus, sums[0]).sign_()
        agree = torch.mul(taus, sign, out=work).gt_(0.0)
        count = over_models(agree, sums[1]).clamp_(min=1.0)
        merged = over_models(taus.mul_(agree), sums[0])
        return b.add_(merged.div_(count).mul_(alpha))
    return kernel


def _ties_one_kernel(lambd: float | None, w: float, alpha: float) -> Callable:
    """ties_kernel for one model, which the sign election and disjoint mean leave as the trimmed,
    weighted task vector itself: each entry agrees with its own sign where nonzero, and the
    count is 1 everywhere (clamped from 0 where it is zero), so dividing by it is exact. Left
    is the +0 the sum over models starts from, which turns a -0 entry into +0 before alpha
    scales it. Five sweeps of the chunk instead of thirteen (TIES's usual case: one adapted
    model; measured on the merge benchmark's 1B model, its output pass took 4.6 s, not 7.9 s)."""
    def kernel(b: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
        tau = taus[0].sub_(b)
        if lambd is not None:
            torch.hardshrink(tau, lambd, out=tau)
        if w != 1.0:  # x*1.0 is x exactly
            tau.mul_(w)
        tau.add_(0.0)  # +0 + x: -0 becomes +0, as in the sum over models
        if alpha != 1.0:
            tau.mul_(alpha)
        return b.add_(tau)
    return kernel


def write_blocks(name: str, readers: Sequence, fn: Callable, out_dtype: torch.dtype, writer,
                 bufs: dict) -> None:
    """The output pass: fn(base chunk, model chunks) per float32 chunk, written row block by row
    block. A block is written by a second thread while the next is computed (two output
    buffers); every write of the tensor has finished when this returns, so the writer is never
    used by two threads."""
    pending: dict[int, object] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="merge-write") as pool:
        for j, (r0, shape, ins) in enumerate(blocks(name, readers, bufs)):
            if j % 2 in pending:
                pending.pop(j % 2).result()  # this buffer's previous block is on disk
            out = scratch(bufs, ("out", j % 2), shape, out_dtype)
            flat = out.view(-1)
            for c, work in chunks(ins, bufs):
                flat[c:c + work.shape[1]].copy_(fn(work[0], work[1:]))
            pending[j % 2] = pool.submit(writer.add_rows, name, r0, out)
        for future in pending.values():
            future.result()


@contextlib.contextmanager
def compute_threads() -> Iterator[int]:
    """torch's intra-op threads capped at the CPUs the reader and writer threads leave free, for
    the duration of a merge. Measured on 2 CPUs: with 2 intra-op threads a linear merge took 7.8 s,
    with 1 it took 3.9 s, because the spinning workers starved the threads doing the I/O."""
    before = torch.get_num_threads()
    threads = max(1, min(before, len(os.sched_getaffinity(0)) - 2))
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
