"""Microbatch iterators over a dataset, resumable by consumed samples.

Sample order is megatron's pretraining sampler: the global batch is a run of consecutive sample
indices; each group of micro_batch_size * dp of them is split by data-parallel rank. A run that
resumes at `consumed_samples` therefore sees exactly the samples the uninterrupted run would.
The dataset's sample index is built for the run's planned token budget, not its step count, so a
run extended within that budget reads what a longer run would have from the start.

Only pipeline ranks holding the first or the last stage read data (tokens are used by the
first, labels and masks by the last), through one loader per rank that feeds all its virtual
chunks; the other ranks' chunks get placeholder batches of the same shape that megatron ignores.
"""
from __future__ import annotations

import collections
import logging
import math
import os
from typing import Iterator

import torch
from torch.utils.data import DataLoader

from elama.data.blend import blend_fingerprint, build_gpt_dataset, format_budget, token_budget
from elama.data.synthetic import synthetic_microbatches

logger = logging.getLogger(__name__)

BATCH_KEYS = ("tokens", "labels", "loss_mask")
OPENS: collections.Counter = collections.Counter()
"""Datasets built and loaders started in this process, by kind (what the tests count)."""


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
    OPENS["loader"] += 1
    sampler = MicroBatchSampler(len(dataset), consumed_samples, micro_batch_size, dp_rank, dp)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                        collate_fn=_collate, persistent_workers=num_workers > 0,
                        pin_memory=torch.cuda.is_available())
    return iter(loader)


class ChunkFeed:
    """One microbatch stream of this rank fanned out to its model chunks: every chunk's iterator
    yields the same microbatches in order, each fetched from the source once and kept only until
    every chunk has passed it (interleaved schedules run chunks a few microbatches apart)."""

    def __init__(self, source: Iterator[dict], chunks: int):
        self.source, self.buffer = source, collections.deque()
        self.start, self.positions = 0, [0] * chunks

    def views(self) -> list[Iterator[dict]]:
        return [self._view(c) for c in range(len(self.positions))]

    def _view(self, chunk: int) -> Iterator[dict]:
        while True:
            index = self.positions[chunk]
            self.positions[chunk] += 1
            while index - self.start >= len(self.buffer):
                self.buffer.append(next(self.source))
            yield self.buffer[index - self.start]
            while self.start < min(self.positions):
                self.buffer.popleft()
                self.start += 1


def placeholder_microbatches(micro_batch_size: int, seq_len_tokens: int) -> Iterator[dict]:
    """What a middle pipeline rank's chunks read: shapes only, no data (megatron takes their
    input from the previous stage and computes no loss there)."""
    tokens = torch.zeros(micro_batch_size, seq_len_tokens, dtype=torch.long)
    batch = {"tokens": tokens, "labels": tokens, "loss_mask": torch.zeros(tokens.shape)}
    while True:
        yield batch


def rank_reads_data(dims) -> bool:
    """Whether this pipeline rank holds the first or the last stage (any of its chunks)."""
    from elama.parallel import setup

    return setup.pp_rank() in (0, dims.pp - 1)


def planned_samples(cfg, saved_plan: dict | None) -> int:
    """Sequences the training data is planned for: data.token_budget, else the checkpoint's plan
    when resuming, else train.train_steps at this first start. Refuses (ConfigError) a resumed
    plan that would change, and steps beyond the plan: either would read other samples."""
    from elama.config import ConfigError

    t, seq = cfg.train, cfg.data.seq_len_tokens
    needed = t.train_steps * t.global_batch_size
    saved = (saved_plan or {}).get("num_samples")
    if cfg.data.token_budget is not None:
        planned, origin = math.ceil(cfg.data.token_budget / seq), f"data.token_budget={cfg.data.token_budget}"
    elif saved is not None:
        planned, origin = saved, "the checkpoint's data plan"
    else:
        planned, origin = needed, f"train.train_steps={t.train_steps}"
    if saved is not None and planned != saved and not cfg.data.replan:
        raise ConfigError([f"{origin} plans {planned:,} sequences but the checkpoint's data was "
                           f"planned for {saved:,}: the sample order would change from the "
                           "first step; keep the plan (drop data.token_budget or set it to "
                           f"{saved * seq}), or set data.replan=true to accept a new order"])
    if needed > planned:
        raise ConfigError([f"train.train_steps={t.train_steps} needs {needed:,} sequences "
                           f"({needed * seq:,} tokens) but {origin} plans {planned:,} "
                           f"({planned * seq:,} tokens): set data.token_budget to at least "
                           f"{needed * seq} at the run's first start (a longer plan from then "
                           "on), or data.replan=true to re-plan (other samples from the start)"])
    return planned


def build_train_data(cfg, dims, consumed_samples: int,
                     saved_plan: dict | None = None) -> tuple[list, dict]:
    """One training iterator per model chunk of this rank (all yield the same microbatches, from
    one loader), and the data plan recorded in checkpoints (source, blend fingerprint, planned
    sequences, token budget). saved_plan: the resumed checkpoint's."""
    from elama.parallel import setup

    t, seq = cfg.train, cfg.data.seq_len_tokens
    if cfg.data.source == "sft":  # instruction data: packed examples, answer-token masks
        from elama.data.sft.dataset import build_sft_train_data

        return build_sft_train_data(cfg, dims, consumed_samples)
    reads = rank_reads_data(dims)
    if cfg.data.source == "synthetic":
        source = synthetic_microbatches(seed=cfg.seed, seq_len_tokens=seq,
                                        vocab_size=cfg.model.vocab_size,
                                        micro_batch_size=t.micro_batch_size,
                                        dp_rank=setup.dp_rank(), dp=dims.dp,
                                        start_sample=consumed_samples)
        return _feed(source, dims, reads, t.micro_batch_size, seq), {
            "source": "synthetic", "seq_len_tokens": seq, "blend": []}
    samples = planned_samples(cfg, saved_plan)
    dataset, sources = build_gpt_dataset(cfg, cfg.data.train_blend, samples, _cache_dir(cfg),
                                         "data.train_blend", built_on_rank=reads)
    budget = token_budget(sources, samples * seq)
    logger.info(format_budget(budget, samples * seq))
    source = None
    if reads:
        OPENS["dataset"] += 1
        source = build_iterator(dataset, consumed_samples=consumed_samples,
                                micro_batch_size=t.micro_batch_size, dp_rank=setup.dp_rank(),
                                dp=dims.dp)
    return _feed(source, dims, reads, t.micro_batch_size, seq), {
        "source": "blend", "seq_len_tokens": seq, "blend": blend_fingerprint(sources),
        "num_samples": samples, "token_budget": budget}


def _feed(source, dims, reads: bool, micro_batch_size: int, seq: int) -> list:
    if not reads:
        source = placeholder_microbatches(micro_batch_size, seq)
    return ChunkFeed(source, dims.vpp).views() if dims.vpp > 1 else [source]


def build_valid_data(cfg, dims) -> dict:
    """name -> a function giving fresh iterators (one per chunk) from the first held-out sample,
    so every evaluation scores the same batches."""
    from elama.parallel import setup

    t, seq = cfg.train, cfg.data.seq_len_tokens
    if not t.eval_interval:
        return {}
    if cfg.data.source == "sft":  # one validation set per held-out task
        from elama.data.sft.dataset import build_sft_valid_data

        return build_sft_valid_data(cfg, dims)
    reads = rank_reads_data(dims)
    if cfg.data.source == "synthetic":
        def synthetic():
            return _feed(synthetic_microbatches(seed=cfg.seed + 1, seq_len_tokens=seq,
                                                vocab_size=cfg.model.vocab_size,
                                                micro_batch_size=t.micro_batch_size,
                                                dp_rank=setup.dp_rank(), dp=dims.dp),
                         dims, reads, t.micro_batch_size, seq)
        return {"synthetic": synthetic}
    sets = {}
    for i, valid in enumerate(cfg.data.valid_blends):
        dataset, _ = build_gpt_dataset(cfg, valid.blend, t.eval_steps * t.global_batch_size,
                                       _cache_dir(cfg), f"data.valid_blends[{i}]",
                                       built_on_rank=reads)
        sets[valid.name] = (lambda d=dataset: _feed(reads and build_iterator(
            d, consumed_samples=0, micro_batch_size=t.micro_batch_size, dp_rank=setup.dp_rank(),
            dp=dims.dp), dims, reads, t.micro_batch_size, seq))
    return sets


def _cache_dir(cfg) -> str:
    return cfg.data.cache_dir or os.path.join(cfg.checkpoint.run_dir, "data_cache")
