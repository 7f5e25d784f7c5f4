"""Held-out perplexity and bits per byte, per dataset (domain) and per language, for any backend.

A dataset is an indexed prefix made by tools/preprocess_data.py (its manifest gives the languages)
or a JSON-lines file tokenized here the way preprocessing does (Llama 3 tokenizer, BOS + text + EOS).
Each document is cut into windows of `seq_len` predicted tokens (window k holds tokens
[k*seq_len, (k+1)*seq_len], the first one as context), so every token after a document's first
is predicted exactly once. Bits per byte divide the summed NLL by the UTF-8 bytes of the
predicted tokens (special tokens have none), as lm-eval's bits_per_byte does per document.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from elama.eval.shopbench import EvalInputError, raise_problems, read_jsonl

MIXED = "mixed"


@dataclass
class EvalDataset:
    name: str
    source: str
    documents: list = field(default_factory=list)  # int64 token arrays
    languages: list = field(default_factory=list)  # one per document
    manifest_languages: dict | None = None


def parse_dataset_spec(spec: str) -> tuple[str, str]:
    """"name=path" or a path (named after its file)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path, name = spec, Path(spec).name.removesuffix(".jsonl")
    return name, path


def load_dataset(spec: str, *, text_keys=("text",), language_key: str | None = "lang",
                 separator: str = "\n\n") -> EvalDataset:
    name, path = parse_dataset_spec(spec)
    if path.endswith(".jsonl"):
        return _load_jsonl(name, path, text_keys, language_key, separator)
    return _load_indexed(name, path)


def _load_indexed(name: str, prefix: str) -> EvalDataset:
    from elama import scoring
    from elama.data.manifest import ManifestError, dataset_prefixes, read_manifest

    try:
        manifest = read_manifest(prefix)
        prefixes = dataset_prefixes(prefix)
    except ManifestError as e:
        raise EvalInputError(f"dataset {name}: {e} (or give a .jsonl file)") from None
    docs = [d for p in prefixes for d in scoring.read_indexed_documents(p)]
    by_lang = manifest.get("documents_by_language") or {}
    # The .idx keeps no per-document language: one language is known, several are "mixed".
    lang = next(iter(by_lang)) if len(by_lang) == 1 else MIXED
    return EvalDataset(name, prefix, docs, [lang] * len(docs), dict(by_lang))


def _load_jsonl(name, path, text_keys, language_key, separator) -> EvalDataset:
    from elama.tokenizer import load_tokenizer

    tok = load_tokenizer()
    ds, problems = EvalDataset(name, path), []
    for lineno, obj in read_jsonl(path):
        missing = [k for k in text_keys if not isinstance(obj, dict) or not isinstance(obj.get(k), str)]
        if missing:
            problems.append(f"line {lineno}: field '{missing[0]}' is missing or not a string")
            continue
        text = separator.join(obj[k] for k in text_keys)
        ds.documents.append(np.asarray(tok.encode(text, bos=True, eos=True), dtype=np.int64))
        lang = obj.get(language_key) if language_key else None
        ds.languages.append(lang if isinstance(lang, str) else "und")
    raise_problems(path, problems, f"dataset {name} (text keys {list(text_keys)})")
    if not ds.documents:
        raise EvalInputError(f"{path}: dataset {name} has no documents")
    return ds


def windows(doc: np.ndarray, seq_len: int) -> list[np.ndarray]:
    return [doc[s:s + seq_len + 1] for s in range(0, len(doc) - 1, seq_len)]


def token_byte_lengths(size: int) -> np.ndarray:
    """UTF-8 bytes of every Llama 3 token id below `size`; special and padding ids count 0."""
    from elama.tokenizer import load_tokenizer

    lengths = np.zeros(max(size, load_tokenizer().vocab_size), dtype=np.int64)
    for raw, i in load_tokenizer().mergeable_ranks.items():
        lengths[i] = len(raw)
    return lengths


def _summary(nll: float, tokens: int, nbytes: int, documents: int) -> dict:
    return {"documents": documents, "tokens": tokens, "bytes": nbytes, "nll_nats": nll,
            "loss": nll / tokens, "perplexity": math.exp(nll / tokens),
            "bits_per_byte": nll / (math.log(2) * nbytes) if nbytes else float("nan")}


def dataset_perplexity(backend, ds: EvalDataset, *, seq_len: int = 256,
                       max_tokens: int | None = None, progress: bool = True) -> dict:
    """{documents, tokens, bytes, nll_nats, loss, perplexity, bits_per_byte, languages: {...}};
    with max_tokens, documents are read in order until that many tokens are predicted."""
    from tqdm import tqdm

    too_big = [i for i, d in enumerate(ds.documents) if len(d) and d.max() >= backend.vocab_size]
    if too_big:
        raise EvalInputError(f"dataset {ds.name} ({ds.source}): document {too_big[0]} has token "
                             f"ids >= the model's vocab_size {backend.vocab_size} (data tokenized "
                             "for another model?)")
    work, budget = [], max_tokens
    for doc_index, doc in enumerate(ds.documents):
        for w in windows(doc, seq_len):
            if budget is not None and budget <= 0:
                break
            if budget is not None and len(w) - 1 > budget:
                w = w[:budget + 1]
            work.append((doc_index, w))
            budget = None if budget is None else budget - (len(w) - 1)
    byte_len = token_byte_lengths(backend.vocab_size)
    nll, ntok, nbytes, docs = defaultdict(float), defaultdict(int), defaultdict(int), defaultdict(set)
    step = max(1, getattr(backend, "batch_size", 8))
    for start in tqdm(range(0, len(work), step), desc=f"perplexity {ds.name}", disable=not progress):
        batch = work[start:start + step]
        scored = backend.token_logprobs([w.tolist() for _, w in batch])
        if not backend.is_output:
            continue
        for (doc_index, w), (logp, _) in zip(batch, scored):
            lang = ds.languages[doc_index]
            nll[lang] -= float(logp.sum())
            ntok[lang] += len(w) - 1
            nbytes[lang] += int(byte_len[w[1:]].sum())
            docs[lang].add(doc_index)
    if not backend.is_output:
        return {}
    langs = sorted(ntok)
    out = _summary(math.fsum(nll[k] for k in langs), sum(ntok.values()), sum(nbytes.values()),
                   sum(len(docs[k]) for k in langs))
    out["languages"] = {k: _summary(nll[k], ntok[k], nbytes[k], len(docs[k])) for k in langs}
    if ds.manifest_languages is not None:
        out["manifest_documents_by_language"] = ds.manifest_languages
    out["source"] = ds.source
    return out


def perplexity_report(backend, datasets: list[EvalDataset], **kwargs) -> dict:
    """{"model", "datasets": {name: dataset_perplexity(...)}} ({} datasets off the output rank)."""
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise EvalInputError(f"dataset names {names} repeat; name them NAME=PATH")
    return {"model": str(backend.path),
            "datasets": {d.name: dataset_perplexity(backend, d, **kwargs) for d in datasets}}


def markdown_perplexity(report: dict) -> str:
    from elama.eval.shopbench import markdown_table

    rows = []
    for name, r in report["datasets"].items():
        for lang, s in [("all", r), *r["languages"].items()]:
            rows.append([name, lang, s["documents"], s["tokens"], s["perplexity"], s["bits_per_byte"]])
    return markdown_table(["dataset", "language", "documents", "tokens", "perplexity", "bits/byte"],
                          rows, 2)
