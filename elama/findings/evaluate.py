"""Evaluation of every model of the study (base, variants, merge sweep) with what tools/evaluate.py
runs (elama.eval.runs): `perplexity` on the held-out files of each corpus and language and
`shopbench --mc loglik` on the ShopBench-format tasks, in this one process (twenty tool starts
would cost a fifth of the time budget). The reports land in eval/ as `--report` writes them and are
read back into one score dict per model:
{"perplexity": {corpus: {"ppl", "nll", "tokens", "by_lang": {lang: ppl}}},
 "shopbench": {"score", "tasks": {task: {"acc", "acc_norm", "n"}}}}.
"""
from __future__ import annotations

import math
import os
import shlex
import time
from collections import defaultdict
from pathlib import Path

from elama.findings.commands import self_cpu_s

SEQ_LEN_TOKENS = 128  # the training windows' length
HELDOUT_PREFIX = "heldout_"  # corpus files heldout_<corpus>_<lang>.jsonl


def heldout_specs(corpus_paths: dict[str, str]) -> list[str]:
    """NAME=PATH of every held-out file, NAME = <corpus>_<lang>."""
    return [f"{name[len(HELDOUT_PREFIX):]}={path}" for name, path in sorted(corpus_paths.items())
            if name.startswith(HELDOUT_PREFIX)]


def tool_commands(model: Path, corpus_paths: dict[str, str], out_dir: Path,
                  tokens_per_lang: int) -> list[str]:
    """The tools/evaluate.py command lines that give the same reports for one model."""
    data = " ".join(f"--data {shlex.quote(s)}" for s in heldout_specs(corpus_paths))
    return [f"python tools/evaluate.py perplexity --model {model} {data} --seq-len "
            f"{SEQ_LEN_TOKENS} --max-tokens {tokens_per_lang} --report "
            f"{out_dir / (model.name + '.perplexity.json')}",
            f"python tools/evaluate.py shopbench {corpus_paths['tasks']} --model {model} "
            f"--mc loglik --report {out_dir / (model.name + '.shopbench.json')}"]


def read_scores(perplexity_report: dict, shopbench_report: dict) -> dict:
    """One model's scores from its two reports; a corpus's perplexity pools its languages."""
    nll, tokens, by_lang = defaultdict(float), defaultdict(int), defaultdict(dict)
    for name, r in perplexity_report["datasets"].items():
        corpus, _, lang = name.partition("_")
        nll[corpus] += r["nll_nats"]
        tokens[corpus] += r["tokens"]
        by_lang[corpus][lang] = r["perplexity"]
    perplexity = {c: {"ppl": math.exp(nll[c] / tokens[c]), "nll": nll[c] / tokens[c],
                      "tokens": tokens[c], "by_lang": by_lang[c]} for c in sorted(nll)}
    tasks = {t: {"acc": r["acc"], "acc_norm": r["acc_norm"], "n": r["n"]}
             for t, r in sorted(shopbench_report["tasks"].items())}
    return {"perplexity": perplexity,
            "shopbench": {"score": shopbench_report["overall"], "tasks": tasks}}


def evaluate_models(models: dict[str, Path], corpus_paths: dict[str, str], out_dir: Path, times,
                    *, tokens_per_lang: int, echo=print) -> dict[str, dict]:
    """{model name: scores}, and eval/<name>.{perplexity,shopbench}.json."""
    import torch

    from elama.eval.runs import evaluate_perplexity, evaluate_shopbench
    from elama.eval.shopbench import write_report

    t0, c0 = time.perf_counter(), self_cpu_s()
    threads = max(1, min(2, os.cpu_count() or 1))  # nothing else of the study runs meanwhile
    torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, hf_dir in models.items():
        ppl = evaluate_perplexity(hf_dir, heldout_specs(corpus_paths), seq_len=SEQ_LEN_TOKENS,
                                  max_tokens=tokens_per_lang, progress=False)
        shop = evaluate_shopbench(corpus_paths["tasks"], model=hf_dir, mc="loglik",
                                  progress=False)
        write_report(out_dir / f"{name}.perplexity.json", ppl)
        write_report(out_dir / f"{name}.shopbench.json", shop)
        results[name] = {"path": str(hf_dir), **read_scores(ppl, shop)}
        p = results[name]["perplexity"]
        echo(f"  {name}: domain ppl {p['domain']['ppl']:.2f}, general ppl "
             f"{p['general']['ppl']:.2f}, ShopBench acc {results[name]['shopbench']['score']:.3f}")
    times.add("evaluate", time.perf_counter() - t0, self_cpu_s() - c0, threads)
    return results
