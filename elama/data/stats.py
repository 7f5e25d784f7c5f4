"""Token accounting over tokenized datasets: tokens per corpus and language, and for a blend
(weights) and a token budget, how many epochs of each corpus training would consume."""
from __future__ import annotations

import math
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
        row["weight_given"], row["weight"] = w, w / total
        row["budget_tokens"] = int(token_budget * row["weight"])
        row["epochs"] = row["budget_tokens"] / row["tokens"] if row["tokens"] else float("inf")
    return rows


def normalization_note(rows: list[dict]) -> str | None:
    """Say so when the given weights do not sum to 1 and were rescaled (0.7/0.7 -> 0.5/0.5)."""
    given = [r["weight_given"] for r in rows]
    if math.isclose(sum(given), 1.0, rel_tol=1e-9):
        return None
    shown = ", ".join(f"{w:g}" for w in given)
    normalised = ", ".join(f"{r['weight']:.4g}" for r in rows)
    return f"blend weights {shown} sum to {sum(given):g}, not 1: normalised to {normalised}"


def language_tokens(rows: list[dict], budget: bool) -> dict[str, dict[str, float]]:
    """{prefix: {language: tokens}}: the corpus's own tokens, or with `budget` the tokens the
    blend's budget draws from it, split by the corpus's language shares."""
    out = {}
    for r in rows:
        scale = r["budget_tokens"] / r["tokens"] if budget and r["tokens"] else 1.0
        out[r["prefix"]] = {lang: n * scale for lang, n in r["tokens_by_language"].items()}
    return out


def plot_language_bars(rows: list[dict], path: str, *, budget: bool) -> str:
    """Stacked bar chart, one bar per source, one colour per language; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    per_source = language_tokens(rows, budget)
    languages = sorted({lang for langs in per_source.values() for lang in langs})
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(per_source) + 2), 4))
    labels = [p.rsplit("/", 1)[-1] for p in per_source]
    bottom = [0.0] * len(per_source)
    for lang in languages:
        values = [langs.get(lang, 0.0) for langs in per_source.values()]
        ax.bar(labels, values, bottom=bottom, label=lang)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("tokens drawn under the budget" if budget else "tokens")
    ax.set_title("token budget by source and language" if budget else "tokens by source and language")
    ax.legend(title="language", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
