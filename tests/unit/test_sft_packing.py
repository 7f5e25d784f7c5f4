"""Packing: several examples per sequence with a block-diagonal causal mask give the same loss and
gradients as one padded example per sequence under megatron's plain causal mask; what the THD
(GPU) path is handed is built and checked here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from elama.data.sft.packing import (block_causal_mask, build_packed_seq_params, build_sample,
                                    cu_seqlens, first_fit)
from tests.model_utils import TINY_OVERRIDES

SEQ = 64
PAD = 0


def _examples(n=9, seed=3):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(6, 30))
        ids = rng.integers(1, 512, length)
        mask = np.zeros(length, dtype=np.int64)
        start = int(rng.integers(2, length - 2))
        mask[start:] = 1  # the answer and its end-of-turn token
        out.append((ids, mask))
    return out


def test_first_fit_packs_in_order_and_refuses_oversized():
    assert first_fit([40, 30, 20, 10, 64], 64) == [[0, 2], [1, 3], [4]]
    with pytest.raises(ValueError, match="example 1 has 65 tokens"):
        first_fit([3, 65], 64)


def test_sample_shifts_within_examples_and_restarts_positions():
    a = (np.array([5, 6, 7]), np.array([0, 1, 1]))
    b = (np.array([8, 9]), np.array([0, 1]))
    s = build_sample([a, b], 8, PAD)
    assert s["tokens"].tolist() == [5, 6, 7, 8, 9, 0, 0, 0]
    assert s["labels"][:5].tolist() == [6, 7, PAD, 9, PAD]
    assert s["loss_mask"].tolist() == [1, 1, 0, 1, 0, 0, 0, 0]  # no loss across examples
    assert s["position_ids"].tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    mask = block_causal_mask(s["segment_ids"][None])[0, 0]
    assert not mask[4, 3] and mask[3, 2] and mask[4, 2] and mask[2, 3]  # own example, causal
    assert mask.logical_not().sum(-1).min() >= 1  # no fully masked row


def test_thd_params_for_the_gpu_path():
    s = build_sample([(np.arange(3), np.ones(3)), (np.arange(2), np.ones(2))], 8, PAD)
    assert cu_seqlens(s["segment_ids"]).tolist() == [0, 3, 5, 8]
    params = build_packed_seq_params(s["segment_ids"][None])
    assert params.qkv_format == "thd" and params.max_seqlen_q == 3
    assert params.cu_seqlens_q.dtype == torch.int32 and params.cu_seqlens_kv.tolist() == [0, 3, 5, 8]
    with pytest.raises(ValueError, match="micro_batch_size=1"):
        cu_seqlens(torch.zeros(2, 8))


@pytest.fixture(scope="module", params=["sdpa", "megatron"])
def model(request):
    from elama.config import load_config
    from elama.parallel import parallelize_llama, setup
    from elama.parallel.dims import ParallelDims
    from elama.parallel.shards import apply_full_state_dict
    from tests.model_utils import reference_init

    setup.init_single_process()
    cfg = load_config(TINY_OVERRIDES + [f"data.seq_len_tokens={SEQ}",
                                        f"model.core_attention={request.param}"])
    dims = ParallelDims.from_config(cfg.parallel, 1)
    chunks, tc = parallelize_llama(cfg, dims)
    apply_full_state_dict(chunks, reference_init(chunks, 1))
    yield chunks
    setup.destroy_distributed()


def _loss_and_grads(chunks, samples):
    from elama.trainer import _run_schedule, reduce_loss

    for c in chunks:
        c.zero_grad_buffer()
    batches = [{k: v[None] for k, v in s.items()} for s in samples]
    reports = _run_schedule(chunks, [iter(batches)], len(batches), SEQ, 1, forward_only=False)
    loss, tokens = reduce_loss(reports)
    grads = {n: p.main_grad.clone() for n, p in chunks[0].module.named_parameters()}
    return loss, tokens, grads


def test_packed_and_padded_give_the_same_loss_and_grads(model):
    examples = _examples()
    packed = [build_sample([examples[i] for i in b], SEQ, PAD)
              for b in first_fit([len(e[0]) for e in examples], SEQ)]
    assert len(packed) < len(examples) / 2
    padded = []
    for e in examples:
        s = build_sample([e], SEQ, PAD)
        del s["segment_ids"], s["position_ids"]  # megatron's own causal mask, no packing inputs
        padded.append(s)
    loss_p, n_p, grads_p = _loss_and_grads(model, packed)
    loss_u, n_u, grads_u = _loss_and_grads(model, padded)
    assert n_p == n_u == sum(int(m[1:].sum()) for _, m in examples)
    assert loss_p == pytest.approx(loss_u, rel=1e-5)
    for name in grads_u:
        scale = grads_u[name].norm()
        assert (grads_p[name] - grads_u[name]).norm() <= 1e-5 * scale, name
    # the mask has teeth: the packed sequences under a plain causal mask see across examples
    leaky = [{k: v for k, v in s.items() if k not in ("segment_ids", "position_ids")}
             for s in packed]
    loss_leak, _, _ = _loss_and_grads(model, leaky)
    assert abs(loss_leak - loss_u) > 1e-3 * loss_u
