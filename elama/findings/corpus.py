"""The findings' corpora as JSONL, all seeded: general training text (stdlib docstrings in English,
seeded prose in de/fr/es/it), domain training text (the demo's synthetic listings and reviews),
held-out general and domain text per language, and the ShopBench-format domain tasks."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from elama.data.demo_corpus import iter_ecommerce_records, iter_stdlib_docstrings, \
    render_ecommerce_text
from elama.findings.general_text import iter_general_records
from elama.findings.tasks import build_tasks

# Seeds of the held-out sets differ from the training seeds, so nothing held out is trained on.
TRAIN_SEED, HELDOUT_SEED, TASKS_SEED = 0, 101, 202


@dataclass(frozen=True)
class CorpusSizes:
    general_en_bytes: int = 1_000_000
    """Standard-library docstrings (English): the first 90% train, the rest is held out."""
    general_multi_docs: int = 1600
    """Seeded de/fr/es/it general documents for training."""
    ecommerce_docs: int = 2000
    """Synthetic listings and reviews for training (half each)."""
    heldout_docs: int = 200
    """Held-out documents per corpus (domain, general de/fr/es/it)."""
    tasks_per_task: int = 20
    """ShopBench-format questions per domain task."""


def write_jsonl(path: Path, records) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def _docstrings(total_bytes: int) -> list[dict]:
    docs, size = [], 0
    for record in iter_stdlib_docstrings():
        docs.append(record)
        size += len(record["text"].encode("utf-8"))
        if size >= total_bytes:
            break
    if len(docs) < 10:
        raise RuntimeError(f"only {len(docs)} standard-library modules with docstrings found; "
                           "is the Python stdlib source installed?")
    return docs


def _ecommerce_text(n: int, seed: int) -> list[dict]:
    """Listings and reviews as {id, lang, text}: the text tokenization would join."""
    half = n // 2
    records = [*iter_ecommerce_records(half, seed, "listing"),
               *iter_ecommerce_records(n - half, seed + 1, "review")]
    return [{"id": r["id"], "lang": r["lang"], "text": render_ecommerce_text(r)} for r in records]


def write_findings_corpus(out_dir: str | Path, sizes: CorpusSizes = CorpusSizes()) -> dict:
    """Write every JSONL under out_dir; returns {name: path} and the record counts."""
    out = Path(out_dir)
    docs = _docstrings(sizes.general_en_bytes)
    cut = len(docs) * 9 // 10
    files = {
        "general": (docs[:cut] + list(iter_general_records(sizes.general_multi_docs, TRAIN_SEED))),
        "ecommerce": _ecommerce_text(sizes.ecommerce_docs, TRAIN_SEED),
        "valid_general": docs[cut:] + list(iter_general_records(sizes.heldout_docs, HELDOUT_SEED)),
        "valid_ecommerce": _ecommerce_text(sizes.heldout_docs, HELDOUT_SEED),
        "tasks": build_tasks(sizes.tasks_per_task, TASKS_SEED),
    }
    # One held-out file per corpus and language too: an evaluation's token budget then covers
    # every language, not only the first documents' (the English docstrings are long).
    for corpus, key in (("domain", "valid_ecommerce"), ("general", "valid_general")):
        for lang in sorted({r["lang"] for r in files[key]}):
            files[f"heldout_{corpus}_{lang}"] = [r for r in files[key] if r["lang"] == lang]
    paths = {name: out / f"{name}.jsonl" for name in files}
    counts = {name: write_jsonl(paths[name], records) for name, records in files.items()}
    return {"paths": {k: str(v) for k, v in paths.items()}, "counts": counts}
