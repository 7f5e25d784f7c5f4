"""Greedy answers to ShopBench rows on any backend: batched by task type (each with its own cap
on new tokens), prompts sorted by length inside a type so batches pad little, outputs returned
in row order. Base models get the raw prompt, instruct models the chat template (`chat=True`).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

# New-token caps per task type: an option digit, a few item numbers, entity lists, free text.
DEFAULT_MAX_NEW_TOKENS = {"multiple-choice": 8, "retrieval": 24, "ranking": 24,
                          "named_entity_recognition": 64, "generation": 128}


def parse_max_new_tokens(items: Sequence[str]) -> dict[str, int]:
    """TYPE=N overrides of DEFAULT_MAX_NEW_TOKENS; ValueError naming a bad item."""
    caps = dict(DEFAULT_MAX_NEW_TOKENS)
    for item in items:
        name, _, value = item.partition("=")
        if name not in caps or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--max-new-tokens {item!r}: expected TYPE=N with N >= 1 and TYPE "
                             f"one of {list(caps)}")
        caps[name] = int(value)
    return caps


def generate_outputs(backend, rows, *, chat: bool = False, batch_size: int = 8,
                     max_new_tokens: dict[str, int] | None = None, progress: bool = True) -> list[str]:
    """One decoded greedy answer per row (special tokens dropped), in row order."""
    from tqdm import tqdm

    caps = max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    prompts = [backend.encode_prompt(r.input_field, chat) for r in rows]
    by_type = defaultdict(list)
    for i, r in enumerate(rows):
        by_type[r.task_type].append(i)
    outputs: list[str | None] = [None] * len(rows)
    bar = tqdm(total=len(rows), desc="generating", disable=not progress)
    for task_type, idx in by_type.items():
        idx.sort(key=lambda i: -len(prompts[i]))
        for start in range(0, len(idx), batch_size):
            batch = idx[start:start + batch_size]
            new = backend.generate([prompts[i] for i in batch], caps[task_type])
            for i, ids in zip(batch, new):
                outputs[i] = backend.decode(ids)
            bar.update(len(batch))
    bar.close()
    return outputs
