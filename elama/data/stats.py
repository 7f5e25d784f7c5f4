"""Token accounting over tokenized datasets: tokens per corpus and language, and for a blend
(weights) and a token budget, how many epochs of each corpus training would consume."""
from __future__ import annotations

import re
from typing import Sequence

from elama.data.manifest import read_manifest

_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_token_count(text: str) -> int:
    """'1T' -> 10**12, '250B' -> 2.5e11, '3.5M', '1e9', '1000'."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([KMBGT]?)\s*", text.upper())
    if not m:
        raise ValueError(f"token count {text!r}: expected a number with an optional K/M/B/T "
                         "suffix, e.g. 1T or 250B")
    return int(float(m.group(1)) * _SUFFIXES[m.group(2)])


def parse_blend(items: Sequence[str]) -> list[tuple[float, str]]:
    """['0.5', 'ecom', '0.5', 'general'] -> [(0.5, 'ecom'), (0.5, 'general')]."""
    if len(items) % 2:
        raise ValueError(f"blend {list(items)}: expected pairs `WEIGHT PREFIX ...`")
    pairs = []
    for weight, prefix in zip(items[::2], items[1::2]):
        try:
            w = float(weight)
        except ValueError:
            raise ValueError(f"blend weight {weight!r} (before {prefix}) is not a number") from None
        if w < 0:
            raise ValueError(f"blend weight {w} for {prefix} is negative")
        pairs.append((w, prefix))
    if not sum(w for w, _ in pairs) > 0:
        raise ValueError("blend weights sum to 0")
    return pairs


def corpus_rows(prefixes: Sequence[str]) -> list[dict]:
    """One row per prefix: documents, tokens, and tokens per language."""
    rows = []
    for prefix in prefixes:
        m = read_manifest(prefix)
        rows.append({"prefix": prefix, "kind": m["kind"], "documents": m["documents_written"],
                     "rejected": m["documents_rejected"], "tokens": m["tokens_written"],
                     "tokens_by_language": m["tokens_by_language"],
                     "tokenizer_sha256": m["tokenizer"]["sha256"],
                     "vocab_size": m["tokenizer"]["vocab_size"]})
    return rows


def blend_rows(blend: Sequence[tuple[float, str]], token_budget: int) -> list[dict]:
    """Per corpus: normalized weight, tokens drawn from it under `token_budget`, epochs."""
    rows = corpus_rows([p for _, p in blend])
    tokenizers = {(r["tokenizer_sha256"], r["vocab_size"]) for r in rows}
    if len(tokenizers) > 1:
        raise ValueError("the blend mixes tokenizers: " + ", ".join(
            f"{r['prefix']} (sha256 {r['tokenizer_sha256'][:12]}, vocab {r['vocab_size']})"
            for r in rows))
    total = sum(w for w, _ in blend)
    for (w, _), row in zip(blend, rows):
        row["weight"] = w / total
        row["budget_tokens"] = int(token_budget * row["weight"])
        row["epochs"] = row["budget_tokens"] / row["tokens"] if row["tokens"] else float("inf")
    return rows


def format_corpus_table(rows: list[dict]) -> str:
    lines = [f"{'prefix':<40} {'kind':<7} {'documents':>12} {'tokens':>16}  tokens by language"]
    for r in rows:
        by_size = sorted(r["tokens_by_language"].items(), key=lambda kv: -kv[1])
        langs = ", ".join(f"{k} {v:,} ({v / max(r['tokens'], 1):.1%})" for k, v in by_size)
        lines.append(f"{r['prefix']:<40} {r['kind']:<7} {r['documents']:>12,} {r['tokens']:>16,}  "
                     f"{langs}")
    lines.append(f"{'total':<40} {'':<7} {sum(r['documents'] for r in rows):>12,} "
                 f"{sum(r['tokens'] for r in rows):>16,}")
    return "\n".join(lines)


def format_blend_table(rows: list[dict], token_budget: int) -> str:
    lines = [f"token budget {token_budget:,}",
             f"{'prefix':<40} {'weight':>7} {'tokens':>16} {'budget tokens':>18} {'epochs':>12}"]
    for r in rows:
        lines.append(f"{r['prefix']:<40} {r['weight']:>7.3f} {r['tokens']:>16,} "
                     f"{r['budget_tokens']:>18,} {r['epochs']:>12,.2f}")
    return "\n".join(lines)
