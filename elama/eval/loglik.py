"""Log-likelihood scoring on any backend with lm-evaluation-harness's semantics: (context,
continuation) pairs (trailing context spaces move to the continuation; the pair is encoded whole
and split at the context's length; an empty context is the BOS token), rolling document
log-likelihoods in disjoint windows, and multiple choice by log-likelihood: acc (the highest
sum) and acc_norm (the highest sum per character of the choice).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

DEFAULT_MAX_LENGTH = 2048
OPTION_LINE = re.compile(r"^(\d+)\. (.*)$", re.MULTILINE)


def prefix_id(backend) -> int:
    return backend.bos_id if backend.bos_id is not None else backend.eos_id


def encode_pair(backend, context: str, continuation: str) -> tuple[list[int], list[int]]:
    if context == "":
        cont = backend.encode(continuation)
        if cont and cont[0] == prefix_id(backend):
            return cont[:1], cont[1:]
        return [prefix_id(backend)], cont
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = backend.encode_prompt(context + continuation, chat=False)
    ctx = backend.encode_prompt(context, chat=False)
    return ctx, whole[len(ctx):]


def score_token_pairs(backend, pairs: Sequence[tuple[list[int], list[int]]], *,
                      max_length: int = DEFAULT_MAX_LENGTH) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether every continuation token is the argmax);
    context + continuation is cut from the left to max_length + 1 tokens."""
    seqs = [(list(c) + list(x))[-(max_length + 1):] for c, x in pairs]
    scored = backend.token_logprobs(seqs)
    if not backend.is_output:
        return []
    out = []
    for (_, cont), (logp, greedy) in zip(pairs, scored):
        n = len(cont)
        out.append((float(logp[len(logp) - n:].sum()), bool(greedy[len(greedy) - n:].all())))
    return out


def loglikelihood(backend, requests: Sequence[tuple[str, str]], **kwargs) -> list[tuple[float, bool]]:
    return score_token_pairs(backend, [encode_pair(backend, c, x) for c, x in requests], **kwargs)


def rolling_windows(ids: list[int], prefix: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(context, predicted) windows predicting every id once: the first with the prefix token as
    context, the next ones with as much preceding text as fits (lm-eval's disjoint windows)."""
    out, done = [], 0
    while done < len(ids):
        n = min(max_length, len(ids) - done)
        context = [prefix] if done == 0 else ids[max(0, done + n - 1 - max_length):done]
        out.append((context, ids[done:done + n]))
        done += n
    return out


def loglikelihood_rolling(backend, texts: Sequence[str], *,
                          max_length: int = DEFAULT_MAX_LENGTH) -> list[float]:
    """Sum of log p over every token of each text, encoded as a prompt (lm-eval's HF model does
    the same: with a tokenizer that adds BOS, the BOS is scored after the BOS prefix)."""
    windows, owner = [], []
    for i, text in enumerate(texts):
        ids = backend.encode_prompt(text, chat=False)
        for w in rolling_windows(ids, prefix_id(backend), max_length):
            windows.append(w)
            owner.append(i)
    scored = score_token_pairs(backend, windows, max_length=max_length)
    totals = [0.0] * len(texts)
    for i, (ll, _) in zip(owner, scored):
        totals[i] += ll
    return totals


def parse_options(prompt: str) -> list[str]:
    """The options "0. text", "1. text", ... of a ShopBench multiple-choice prompt, in order;
    ValueError unless they are numbered 0..k-1."""
    found = OPTION_LINE.findall(prompt)
    numbers = [int(n) for n, _ in found]
    if len(found) < 2 or numbers != list(range(len(found))):
        raise ValueError(f"expected option lines '0. ...', '1. ...' in order; found numbers {numbers}")
    return [text.strip() for _, text in found]


def choose(lls: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(acc's pick, acc_norm's pick): argmax of the sums, and of the sums per choice character."""
    lls = np.asarray(lls, dtype=np.float64)
    lengths = np.asarray([float(len(c)) for c in choices])
    return int(np.argmax(lls)), int(np.argmax(lls / lengths))


def mc_loglik(backend, prompts: Sequence[str], choices: Sequence[Sequence[str]], golds: Sequence[int],
              *, delimiter: str = " ") -> dict:
    """{"acc", "acc_norm", "picks", "picks_norm"} over the questions; each choice is scored after
    the prompt, joined by lm-eval's target delimiter unless the prompt ends in whitespace
    (ShopBench prompts end in "Answer: ")."""
    requests = [(p, ("" if p[-1:].isspace() else delimiter) + c)
                for p, cs in zip(prompts, choices) for c in cs]
    lls = loglikelihood(backend, requests)
    if not backend.is_output:
        return {}
    picks, picks_norm, k = [], [], 0
    for cs in choices:
        a, b = choose([ll for ll, _ in lls[k:k + len(cs)]], cs)
        picks.append(a)
        picks_norm.append(b)
        k += len(cs)
    n = len(golds)
    return {"acc": sum(p == g for p, g in zip(picks, golds)) / n,
            "acc_norm": sum(p == g for p, g in zip(picks_norm, golds)) / n,
            "picks": picks, "picks_norm": picks_norm}
