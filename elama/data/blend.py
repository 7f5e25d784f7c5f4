"""Blends: weighted tokenized prefixes, checked against their manifests before any process group
starts, the token budget per source, and megatron-core's GPTDataset(s) over them.

e-Llama's mix is 50% e-commerce and 50% general replay; each entry of data.train_blend is one
corpus prefix (a merged dataset or an index of shards) with its weight. Shards of a corpus share
its weight in proportion to their tokens, so the corpus weight is what megatron-core samples by.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from elama.config import BlendEntry, ElamaConfig
from elama.data.manifest import ManifestError, dataset_prefixes, read_manifest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlendSource:
    prefix: str
    weight: float
    """Normalised share of the blend (weights sum to 1)."""
    tokens: int
    """Tokens in the tokenized corpus (its manifest's tokens_written)."""
    tokenizer: dict
    shards: tuple[tuple[str, int], ...]
    """(dataset prefix, tokens) of every .bin/.idx behind the prefix."""


def load_blend(entries: list[BlendEntry], where: str) -> tuple[list[BlendSource], list[str]]:
    """Read every manifest of a blend; returns the sources and every problem found."""
    sources, problems = [], []
    total = sum(e.weight for e in entries if e.weight > 0)
    for i, entry in enumerate(entries):
        try:
            manifest = read_manifest(entry.prefix)
            shards = tuple((p, read_manifest(p)["tokens_written"])
                           for p in dataset_prefixes(entry.prefix))
        except ManifestError as e:
            problems.append(f"{where}[{i}].prefix={entry.prefix}: {e}")
            continue
        if manifest["tokens_written"] == 0:
            problems.append(f"{where}[{i}].prefix={entry.prefix}: the dataset has no tokens")
            continue
        sources.append(BlendSource(entry.prefix, entry.weight / total if total else 0.0,
                                   manifest["tokens_written"], manifest["tokenizer"], shards))
    return sources, problems


def check_data(cfg: ElamaConfig, world_size: int = 0) -> list[str]:
    """All data problems of a run: missing prefixes or manifests, tokenizers that differ between
    datasets or from the run's tokenizer, token ids beyond the model's vocabulary. For
    elama.config.validate(extra_checks=...), so they join the one report."""
    if cfg.data.source == "sft":
        from elama.data.sft.dataset import check_sft_data

        return check_sft_data(cfg)
    if cfg.data.source != "blend":
        return []
    from elama.tokenizer import load_tokenizer

    problems = []
    try:
        tokenizer = load_tokenizer(cfg.data.tokenizer_path)
    except (OSError, ValueError) as e:
        return [f"data.tokenizer_path={cfg.data.tokenizer_path}: {e}"]
    blends = {"data.train_blend": cfg.data.train_blend}
    if cfg.train.eval_interval:
        blends.update({f"data.valid_blends[{i}] ({v.name})": v.blend
                       for i, v in enumerate(cfg.data.valid_blends)})
    for where, entries in blends.items():
        sources, found = load_blend(entries, where)
        problems += found
        for s in sources:
            if s.tokenizer["sha256"] != tokenizer.sha256:
                problems.append(
                    f"{where}: {s.prefix} was tokenized with {s.tokenizer['name']} (sha256 "
                    f"{s.tokenizer['sha256'][:12]}...), this run uses {tokenizer.model_path} "
                    f"(sha256 {tokenizer.sha256[:12]}...): re-tokenize or set data.tokenizer_path")
            if s.tokenizer["vocab_size"] > cfg.model.vocab_size:
                problems.append(f"{where}: {s.prefix} has token ids up to vocab_size="
                                f"{s.tokenizer['vocab_size']} > model.vocab_size="
                                f"{cfg.model.vocab_size}")
    return problems


def megatron_blend(sources: list[BlendSource]) -> tuple[list[str], list[float]]:
    """Expand corpora into dataset prefixes and weights for megatron-core's blend."""
    paths, weights = [], []
    for s in sources:
        for prefix, tokens in s.shards:
            if tokens:
                paths.append(prefix)
                weights.append(s.weight * tokens / s.tokens)
    return paths, weights


def token_budget(sources: list[BlendSource], planned_tokens: int) -> list[dict]:
    """Tokens each source contributes to the planned run, and how often its data repeats."""
    return [{"prefix": s.prefix, "weight": s.weight, "planned_tokens": int(s.weight * planned_tokens),
             "available_tokens": s.tokens, "epochs": s.weight * planned_tokens / s.tokens}
            for s in sources]


def format_budget(rows: list[dict], planned_tokens: int) -> str:
    lines = [f"token budget for {planned_tokens:,} training tokens:"]
    for r in rows:
        lines.append(f"  {r['prefix']}: weight {r['weight']:.3f}, {r['planned_tokens']:,} tokens "
                     f"of {r['available_tokens']:,} available ({r['epochs']:.2f} epochs)")
    return "\n".join(lines)


def blend_fingerprint(sources: list[BlendSource]) -> list[dict]:
    """What a checkpoint records of its blend, to refuse a silent change on resume."""
    return [{"prefix": os.path.abspath(s.prefix), "weight": round(s.weight, 12), "tokens": s.tokens}
            for s in sources]


def gpt_dataset_config(cfg: ElamaConfig, blend: tuple[list[str], list[float]], tokenizer,
                       cache_dir: str):
    """The one translation of our config into megatron-core's GPTDatasetConfig."""
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=cfg.seed,
        sequence_length=cfg.data.seq_len_tokens,
        blend=blend,
        split="1,0,0",  # each blend is one dataset; held-out data comes as its own blend
        path_to_cache=cache_dir,
        tokenizer=tokenizer,
        reset_position_ids=False,  # documents are packed; BOS/EOS mark their boundaries
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,  # causal masking happens inside attention
    )


def build_gpt_dataset(cfg: ElamaConfig, entries: list[BlendEntry], num_samples: int,
                      cache_dir: str, where: str, built_on_rank: bool = True):
    """A GPTDataset (blended when there are several prefixes) of at least num_samples sequences.
    Collective: every rank must call it (rank 0 builds the index cache first); where
    built_on_rank is False (a pipeline rank that reads no data) it opens nothing: None."""
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset

    from elama.tokenizer import load_tokenizer

    sources, problems = load_blend(entries, where)
    if problems:  # validated before start; a file can still vanish in between
        raise ManifestError("\n".join(problems))
    tokenizer = load_tokenizer(cfg.data.tokenizer_path).megatron_adapter()
    config = gpt_dataset_config(cfg, megatron_blend(sources), tokenizer, cache_dir)
    builder = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, 0, 0],
                                            lambda: built_on_rank, config)
    return builder.build()[0], sources
