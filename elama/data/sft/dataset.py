"""The SFT dataset the trainer reads (data.source=sft): passes of the mixture packed (or padded)
into fixed-length sequences, resumable by consumed samples like pretraining, plus held-out
sequences per task for validation.

Sequence i is a pure function of (dataset, mixture, seed, seq_len): a resumed run, or a run at
another layout, reads the same sequences in the same order.
"""
from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from elama.data.sft.mixture import budget, format_budget, group_values, plan_pass
from elama.data.sft.packing import build_sample, first_fit
from elama.data.sft.store import SftData, SftDataError, open_dataset

logger = logging.getLogger(__name__)

PACK_WINDOW = 4096  # examples packed together: bounds first-fit's cost, keeps the mixture's order


class SftSequences(Dataset):
    """At least `num_sequences` training sequences from passes of the mixture."""

    def __init__(self, data: SftData, values: dict[int, float], sft, *, seq_len_tokens: int,
                 num_sequences: int, seed: int, pad_id: int):
        too_long = int((data.lengths > seq_len_tokens).sum())
        if too_long:
            raise SftDataError(f"{data.prefix}: {too_long} examples are longer than "
                               f"data.seq_len_tokens={seq_len_tokens}: raise it or retokenize "
                               "with --max-seq-len at most that")
        self.data, self.seq_len, self.pad_id = data, seq_len_tokens, pad_id
        self.bins: list[np.ndarray] = []
        self.passes = 0
        while len(self.bins) < num_sequences:
            order = plan_pass(data, values, sft, seed=seed, pass_index=self.passes)
            self.bins += self._pack(order) if sft.packing else [order[i:i + 1] for i in range(len(order))]
            self.passes += 1
        self.pass_fraction = self.passes * num_sequences / len(self.bins)

    def _pack(self, order: np.ndarray) -> list[np.ndarray]:
        bins = []
        for start in range(0, len(order), PACK_WINDOW):
            window = order[start:start + PACK_WINDOW]
            bins += [window[b] for b in first_fit(self.data.lengths[window].tolist(), self.seq_len)]
        return bins

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, i: int) -> dict:
        return build_sample([self.data.example(int(j)) for j in self.bins[i]], self.seq_len,
                            self.pad_id)


def collate(samples: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def build_sft_iterator(dataset, *, consumed_samples: int, micro_batch_size: int, dp_rank: int,
                       dp: int) -> Iterator[dict]:
    from elama.data.loader import MicroBatchSampler

    sampler = MicroBatchSampler(len(dataset), consumed_samples, micro_batch_size, dp_rank, dp)
    return iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                           pin_memory=torch.cuda.is_available()))


def _open(cfg, prefix: str) -> SftData:
    from elama.tokenizer import load_tokenizer

    data = open_dataset(prefix, tokenizer_sha256=load_tokenizer(cfg.data.tokenizer_path).sha256)
    if data.manifest["tokenizer"]["vocab_size"] > cfg.model.vocab_size:
        raise SftDataError(f"{prefix}: token ids reach {data.manifest['tokenizer']['vocab_size']}"
                           f" but model.vocab_size={cfg.model.vocab_size}")
    return data


def build_sft_train_data(cfg, dims, consumed_samples: int) -> tuple[list, dict]:
    """One iterator per model chunk of this rank and the data plan (with the budget report)."""
    from elama.parallel import setup

    t, sft = cfg.train, cfg.data.sft
    data = _open(cfg, sft.prefix)
    values = group_values(data, sft)
    sequences = t.train_steps * t.global_batch_size
    dataset = SftSequences(data, values, sft, seq_len_tokens=cfg.data.seq_len_tokens,
                           num_sequences=sequences, seed=cfg.seed,
                           pad_id=data.manifest["tokenizer"]["pad_id"])
    rows = budget(data, values, sft, passes=dataset.pass_fraction)
    logger.info(format_budget(rows, sequences, dataset.pass_fraction))
    iters = [build_sft_iterator(dataset, consumed_samples=consumed_samples,
                                micro_batch_size=t.micro_batch_size, dp_rank=setup.dp_rank(),
                                dp=dims.dp) for _ in range(dims.vpp)]
    plan = {"source": "sft", "seq_len_tokens": cfg.data.seq_len_tokens, "blend": [],
            "prefix": sft.prefix, "packing": sft.packing, "unit": sft.unit,
            "mixture": {f"{a}/{t_}": values.get(g) for g, (a, t_) in enumerate(data.names)},
            "budget": rows}
    return iters, plan


def build_sft_valid_data(cfg, dims) -> dict:
    """'<area>/<task>' -> fresh iterators over that task's held-out sequences (the same
    eval_steps global batches every time; a small task's sequences repeat)."""
    from elama.parallel import setup

    t, sft = cfg.train, cfg.data.sft
    if not t.eval_interval or not sft.valid_prefix:
        return {}
    data = _open(cfg, sft.valid_prefix)
    sets = {}
    for g, (area, task) in enumerate(data.names):
        if not (data.groups == g).any():
            continue
        dataset = SftSequences(data, {g: 1.0}, _epochs(sft), seq_len_tokens=cfg.data.seq_len_tokens,
                               num_sequences=t.eval_steps * t.global_batch_size, seed=cfg.seed,
                               pad_id=data.manifest["tokenizer"]["pad_id"])
        sets[f"{area}/{task}"] = (lambda d=dataset: [build_sft_iterator(
            d, consumed_samples=0, micro_batch_size=t.micro_batch_size, dp_rank=setup.dp_rank(),
            dp=dims.dp) for _ in range(dims.vpp)])
    return sets


def _epochs(sft):
    import dataclasses

    return dataclasses.replace(sft, unit="epochs", mixture=[])


def check_sft_data(cfg) -> list[str]:
    """Problems of a run's instruction data before any process starts: missing or incomplete
    datasets, another tokenizer, a mixture naming tasks the data lacks, examples too long."""
    problems = []
    sft = cfg.data.sft
    for where, prefix in (("data.sft.prefix", sft.prefix), ("data.sft.valid_prefix",
                                                             sft.valid_prefix)):
        if not prefix or (where.endswith("valid_prefix") and not cfg.train.eval_interval):
            continue
        try:
            data = _open(cfg, prefix)
            if where == "data.sft.prefix":
                group_values(data, sft)
            longest = int(data.lengths.max()) if len(data.lengths) else 0
            if longest > cfg.data.seq_len_tokens:
                problems.append(f"{where}={prefix}: an example has {longest} tokens > "
                                f"data.seq_len_tokens={cfg.data.seq_len_tokens}")
        except (SftDataError, OSError, ValueError) as e:
            problems.append(f"{where}: {e}")
    return problems
