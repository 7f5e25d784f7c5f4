"""Microbatch iterators over a dataset, resumable by consumed samples.

Sample order is megatron's pretraining sampler: the global batch is a run of consecutive sample
indices; each group of micro_batch_size * dp of them is split by data-parallel rank. A run that
resumes at `consumed_samples` therefore sees exactly the samples the uninterrupted run would.
"""
from __future__ import annotations

import logging
import os
from typing import Iterator

import torch
from torch.utils.data import DataLoader

from elama.data.blend import blend_fingerprint, build_gpt_dataset, format_budget, token_budget
from elama.data.synthetic import synthetic_microbatches

logger = logging.getLogger(__name__)

BATCH_KEYS = ("tokens", "labels", "loss_mask")


class MicroBatchSampler:
    """Index lists of one data-parallel rank's microbatches, from consumed_samples on."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 dp_rank: int, dp: int):
        if consumed_samples >= total_samples:
            raise ValueError(f"consumed_samples={consumed_samples} >= total_samples="
                             f"{total_samples}: the dataset is exhausted")
        self.total, self.start = total_samples, consumed_samples
        self.mbs, self.rank, self.dp = micro_batch_size, dp_rank, dp

    def __len__(self) -> int:
        return (self.total - self.start) // (self.mbs * self.dp)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.mbs * self.dp
        for first in range(self.start, self.total - step + 1, step):
            own = first + self.rank * self.mbs
            yield list(range(own, own + self.mbs))


def _collate(samples: list[dict]) -> dict:
    return {key: torch.stack([torch.as_tensor(s[key]) for s in samples]).long()
            if key != "loss_mask" else torch.stack([torch.as_tensor(s[key]) for s in samples])
            for key in BATCH_KEYS}


def build_iterator(dataset, *, consumed_samples: int, micro_batch_size: int, dp_rank: int,
                   dp: int, num_workers: int = 0) -> Iterator[dict]:
    """Microbatches {tokens, labels, loss_mask} of this rank, starting at consumed_samples."""
    sampler = MicroBatchSampler(len(dataset), consumed_samples, micro_batch_size, dp_rank, dp)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                        collate_fn=_collate, persistent_workers=num_workers > 0,
                        pin_memory=torch.cuda.is_available())
    return iter(loader)


def build_train_data(cfg, dims, consumed_samples: int) -> tuple[list, dict]:
    """One training iterator per model chunk of this rank (all read the same microbatches), and
    the data plan recorded in checkpoints (source, blend fingerprint, token budget)."""
    from elama.parallel import setup

    t, seq = cfg.train, cfg.data.seq_len_tokens
    planned_tokens = t.train_steps * t.global_batch_size * seq
    if cfg.data.source == "synthetic":
        iters = [synthetic_microbatches(seed=cfg.seed, seq_len_tokens=seq,
                                        vocab_size=cfg.model.vocab_size,
                                        micro_batch_size=t.micro_batch_size,
                                        dp_rank=setup.dp_rank(), dp=dims.dp,
                                        start_sample=consumed_samples) for _ in range(dims.vpp)]
        return iters, {"source": "synthetic", "seq_len_tokens": seq, "blend": []}
    dataset, sources = build_gpt_dataset(cfg, cfg.data.train_blend,
                                         t.train_steps * t.global_batch_size,
                                         _cache_dir(cfg), "data.train_blend")
    budget = token_budget(sources, planned_tokens)
    logger.info(format_budget(budget, planned_tokens))
    iters = [build_iterator(dataset, consumed_samples=consumed_samples,
                            micro_batch_size=t.micro_batch_size, dp_rank=setup.dp_rank(),
                            dp=dims.dp) for _ in range(dims.vpp)]
    return iters, {"source": "blend", "seq_len_tokens": seq, "blend": blend_fingerprint(sources),
                   "token_budget": budget}


def build_valid_data(cfg, dims) -> dict:
    """name -> a function giving fresh iterators (one per chunk) from the first held-out sample,
    so every evaluation scores the same batches."""
    from elama.parallel import setup

    t, seq = cfg.train, cfg.data.seq_len_tokens
    if not t.eval_interval:
        return {}
    if cfg.data.source == "synthetic":
        def synthetic():
            return [synthetic_microbatches(seed=cfg.seed + 1, seq_len_tokens=seq,
                                           vocab_size=cfg.model.vocab_size,
                                           micro_batch_size=t.micro_batch_size,
                                           dp_rank=setup.dp_rank(), dp=dims.dp)
                    for _ in range(dims.vpp)]
        return {"synthetic": synthetic}
    sets = {}
    for i, valid in enumerate(cfg.data.valid_blends):
        dataset, _ = build_gpt_dataset(cfg, valid.blend, t.eval_steps * t.global_batch_size,
                                       _cache_dir(cfg), f"data.valid_blends[{i}]")
        sets[valid.name] = (lambda d=dataset: [build_iterator(
            d, consumed_samples=0, micro_batch_size=t.micro_batch_size, dp_rank=setup.dp_rank(),
            dp=dims.dp) for _ in range(dims.vpp)])
    return sets


def _cache_dir(cfg) -> str:
    return cfg.data.cache_dir or os.path.join(cfg.checkpoint.run_dir, "data_cache")
