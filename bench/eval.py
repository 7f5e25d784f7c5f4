"""Evaluation speed, each figure against a reference measured in the same run:
- `--predictions` scoring: rows per second over a ShopBench-shaped set of every metric, and the
  batched sentence-model scoring against the starter kit's way (one encode call per text);
- generation: new tokens per second of elama.eval's batched greedy generation against plain
  transformers `generate` on the same model, prompts, batches and token caps.
Usage: python bench/eval.py [--rows 3000] [--prompts 32] [--new-tokens 32]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

KIT_SAMPLE_ROWS = 30
KIT_ROWS = [  # (task_type, metric, prompt, truth, answer)
    ("multiple-choice", "accuracy", "Pick.\n0. a\n1. b\nAnswer: ", 1, "1"),
    ("retrieval", "hit rate@3", "Pick 3.", [1, 5, 9], "9, 2, 5"),
    ("ranking", "ndcg", "Rank 1-5.", [3, 2, 1, 0, 0], "2, 1, 3, 5, 4"),
    ("named_entity_recognition", "micro f1", "Brands?", ["nike", "puma"], "['Nike', 'Adidas']"),
    ("generation", "rougel", "Describe.", "a light waterproof jacket", "a light rain jacket"),
    ("generation", "bleu", "Translate.", "free shipping on all orders", "Free shipping on orders"),
    ("generation", "sent-transformer", "Explain.", "a red running shoe", "red sneakers for running"),
]


def write_rows(path: Path, n: int) -> int:
    rows = []
    for i in range(n):
        t, m, prompt, truth, answer = KIT_ROWS[i % len(KIT_ROWS)]
        rows.append(({"input_field": f"{prompt} #{i}", "output_field": truth, "task_name": m,
                      "task_type": t, "metric": m, "is_multiple_choice": t == "multiple-choice",
                      "track": "bench"}, {"output": f"{answer} {i % 97}" if t == "generation" else answer}))
    path.write_text("".join(json.dumps(r) + "\n" for r, _ in rows))
    path.with_suffix(".pred.jsonl").write_text("".join(json.dumps(p) + "\n" for _, p in rows))
    return n


def bench_scoring(root: Path, n: int) -> list[tuple[str, float, str]]:
    import numpy as np

    from elama.eval import metrics as M
    from elama.eval.shopbench import load_predictions, load_rows, score_rows

    tasks = root / "tasks.jsonl"
    write_rows(tasks, n)
    M.sentence_model(M.ENGLISH_MODEL)  # model load is a one-off, not per row
    t = time.perf_counter()
    rows = load_rows(tasks)
    score_rows(rows, load_predictions(tasks.with_suffix(".pred.jsonl"), len(rows)), progress=False)
    rows_per_s = n / (time.perf_counter() - t)
    sent = [(r.output_field, f"red sneakers for running {i % 97}") for i, r in enumerate(rows)
            if r.metric == "sent-transformer"]
    t = time.perf_counter()
    M.cosine_scores(M.ENGLISH_MODEL, [a for _, a in sent], [tr for tr, _ in sent])
    batched = time.perf_counter() - t
    model, t = M.sentence_model(M.ENGLISH_MODEL), time.perf_counter()
    sample = sent[:KIT_SAMPLE_ROWS]  # the kit's way is slow: time a sample, compare per row
    for truth, answer in sample:  # the kit: encode([answer])[0] and encode([truth])[0] per row
        a, b = model.encode([answer])[0], model.encode([truth])[0]
        max(float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))), 0.0)
    per_row_kit, per_row_ours = (time.perf_counter() - t) / len(sample), batched / len(sent)
    print(f"scoring: {n} rows in {n / rows_per_s:.2f} s; sentence rows {per_row_ours * 1e3:.2f} "
          f"ms each batched, {per_row_kit * 1e3:.2f} ms each kit-style")
    return [("predictions_scoring_rows_per_s", rows_per_s, ">= 200"),
            ("sentence_scoring_vs_kit_per_row_speedup", per_row_kit / per_row_ours, ">= 1.0")]


def write_model(out: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from elama.convert.hf_tokenizer import write_hf_tokenizer
    from elama.tokenizer import load_tokenizer

    tok = load_tokenizer()
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=256, intermediate_size=768,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=2048, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(out))
    write_hf_tokenizer(out, tok, model_max_length=2048)
    return out


def bench_generation(root: Path, n_prompts: int, new_tokens: int, batch: int) -> list:
    from elama.eval.backends import HFBackend

    backend = HFBackend(write_model(root / "model"), batch_size=batch)
    prompts = [backend.encode_prompt(f"Product {i}: waterproof hiking jacket, size M. Review:", False)
               for i in range(n_prompts)]
    tok, model = backend.tokenizer, backend.model

    def ours():
        return sum(len(ids) for s in range(0, n_prompts, batch)
                   for ids in backend.generate(prompts[s:s + batch], new_tokens))

    def plain():
        tok.padding_side = "left"
        tok.pad_token = tok.pad_token or tok.eos_token
        count = 0
        for s in range(0, n_prompts, batch):
            enc = tok.pad({"input_ids": prompts[s:s + batch]}, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            count += sum(len(_strip_eos(r[enc["input_ids"].shape[1]:].tolist(), tok.eos_token_id))
                         for r in out)
        return count

    best = {}
    for name, fn in (("plain", plain), ("ours", ours)) * 3:  # interleaved, best of three
        t = time.perf_counter()
        count = fn()
        best[name] = max(best.get(name, 0.0), count / (time.perf_counter() - t))
    print(f"generation: {n_prompts} prompts x {new_tokens} new tokens, batch {batch}: "
          f"elama {best['ours']:.1f} tok/s, transformers generate {best['plain']:.1f} tok/s")
    return [("generation_tokens_per_s_vs_transformers_generate", best["ours"] / best["plain"], ">= 0.95")]


def _strip_eos(ids: list[int], eos: int) -> list[int]:
    return ids[:ids.index(eos)] if eos in ids else ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = bench_scoring(Path(tmp), a.rows)
        figures += bench_generation(Path(tmp), a.prompts, a.new_tokens, a.batch_size)
    for name, value, goal in figures:
        print(f"{name}: {value:.3f} (goal {goal})")


if __name__ == "__main__":
    main()
