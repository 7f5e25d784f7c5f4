"""The findings study's pieces on synthetic numbers: the checks flip when the numbers do, the report
states what the checks computed, the corpus and tasks are seeded and well formed, and the scores
are read from tools/evaluate.py's reports."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from elama.findings import checks as C
from elama.findings.commands import StageTimes
from elama.findings.general_text import GENERAL_LANGUAGES, iter_general_records
from elama.findings.report import render
from elama.findings.study import LR_VARIANTS, MERGE_ALPHAS, MERGES_EVALUATED, VARIANTS
from elama.findings.tasks import TRACKS, build_tasks


def fake_scores(domain: float, general: float, shop: float = 0.5) -> dict:
    def corpus(p):
        return {"ppl": p, "nll": math.log(p), "tokens": 100, "by_lang": {"en": p, "de": p * 1.1}}
    return {"perplexity": {"domain": corpus(domain), "general": corpus(general)},
            "shopbench": {"score": shop, "tasks": {t: {"acc": shop, "acc_norm": shop, "n": 10}
                                                  for t in TRACKS}}}


def study_numbers(**changes) -> dict:
    """A plausible study: replay forgets less, 10% LR balances best, the merge is monotone."""
    models = {"base": fake_scores(100, 20, 0.3), "recipe": fake_scores(40, 22, 0.6),
              "no_replay": fake_scores(35, 30, 0.62), "lr_1pct": fake_scores(80, 20.2, 0.4),
              "lr_100pct": fake_scores(30, 45, 0.65)}
    for a in MERGES_EVALUATED:
        models[f"merge_{a:g}"] = fake_scores(100 - 60 * a, 20 + 2 * a, 0.3 + 0.3 * a)
    for name, (d, g) in changes.items():
        models[name] = fake_scores(d, g)
    return models


SETTLED = [7.0, 5.5, 5.1, 5.0]  # the base's held-out losses at its validations


EXACT = {"alpha0_vs_base": 0.0, "alpha1_vs_recipe": 0.0}


def sweep(models):
    return C.sweep_points(models, MERGE_ALPHAS)


def test_replay_check_follows_the_numbers():
    f = C.check_replay(study_numbers())
    assert f.holds and f.numbers["recipe_general_pct"] == pytest.approx(10.0)
    assert f.numbers["no_replay_general_pct"] == pytest.approx(50.0)
    assert "+10.0%" in f.statement and "+50.0%" in f.statement
    # No replay forgetting less than the recipe: the finding no longer holds.
    assert not C.check_replay(study_numbers(no_replay=(35, 21))).holds
    # The recipe not gaining on the domain: does not hold either.
    assert not C.check_replay(study_numbers(recipe=(120, 21))).holds


def test_lr_check_picks_the_best_net_gain():
    f = C.check_lr(study_numbers(), LR_VARIANTS)
    net = f.numbers["net_nats"]
    assert net["recipe"] == pytest.approx(math.log(100 / 40) - math.log(22 / 20))
    assert f.holds and f.numbers["best"] == "recipe"
    # 100% LR without its forgetting wins, and the check says 10% is not the best.
    g = C.check_lr(study_numbers(lr_100pct=(30, 20)), LR_VARIANTS)
    assert not g.holds and g.numbers["best"] == "lr_100pct" and "at 100% of" in g.statement


def test_merge_checks():
    models = study_numbers()
    assert C.check_merge(sweep(models)).holds
    models["merge_0.5"] = fake_scores(110, 21)  # a bump in the middle
    f = C.check_merge(sweep(models))
    assert not f.holds and "NOT monotone" in f.statement
    assert C.is_monotone([3, 2, 2, 1], increasing=False)
    assert not C.is_monotone([3, 2, 2.1], increasing=False)
    assert C.is_monotone([3, 2, 2.001], increasing=False, rel_tol=1e-3)


def test_merge_endpoint_check_and_sweep_points():
    assert C.check_merge_endpoints(EXACT).holds
    f = C.check_merge_endpoints({**EXACT, "alpha1_vs_recipe": 2e-3})
    assert not f.holds and "alpha1_vs_recipe 0.002" in f.statement
    assert not C.check_merge_endpoints({"alpha0_vs_base": 0.0}).holds
    models = study_numbers()
    points = C.sweep_points(models, MERGE_ALPHAS)
    assert [a for a, _ in points] == list(MERGE_ALPHAS)
    assert points[0][1] is models["base"] and points[-1][1] is models["recipe"]
    assert points[2][1] is models["merge_0.5"]


def test_report_states_the_computed_findings():
    models = study_numbers(lr_100pct=(30, 20))  # the LR finding fails
    findings = C.compute_findings(models, LR_VARIANTS, MERGE_ALPHAS, SETTLED, EXACT)
    times = StageTimes()
    times.add("train_base", 100.0, 180.0, 2)
    times.add("evaluate", 10.0, 12.0, 1)
    text = render(models, findings, times, {"general": 5})
    for name in ["base", *(v.name for v in VARIANTS), "merge_0.25"]:
        assert f"| {name} |" in text
    assert "**lr** (" in text and "**does not hold**" in text and "**replay** (" in text
    assert all(f.statement in text for f in findings)
    closing = text.split("## Closing note")[1]
    assert "**lr** does not hold" in closing and "**replay**" not in closing
    assert "plots/merge.png" in text and "plots/losses.png" in text
    assert "about 102 s" in text  # 180 / 2 + 12 / 1
    assert "| -60.0% |" in text  # recipe's domain perplexity 40 vs the base's 100


def test_general_text_is_seeded_and_multilingual():
    a = list(iter_general_records(40, seed=3))
    assert a == list(iter_general_records(40, seed=3)) != list(iter_general_records(40, seed=4))
    assert {r["lang"] for r in a} == set(GENERAL_LANGUAGES)
    assert all(r["text"].endswith(".") and "{" not in r["text"] for r in a)


def test_tasks_are_shopbench_rows_with_a_right_answer():
    from elama.eval.shopbench import row_problems

    rows = build_tasks(8, seed=5)
    assert rows == build_tasks(8, seed=5)
    assert [r["task_name"] for r in rows].count("review_rating") == 8 and len(rows) == 32
    for i, row in enumerate(rows):
        assert row_problems(row, f"row {i}") == []
        options, answer = row["options"], int(row["output_field"])
        assert len(set(options)) == len(options) and 0 <= answer < len(options)
        assert f"\n{answer}. {options[answer]}\n" in row["input_field"]
    size = next(r for r in rows if r["task_name"] == "attribute_size")
    from elama.data.demo_corpus import PRODUCTS
    sizes = next(s for names, s in PRODUCTS if any(n in size["input_field"] for n in names))
    right = size["options"][int(size["output_field"])]
    assert right in sizes and not set(sizes) & (set(size["options"]) - {right})


def test_eval_reports_become_scores():
    from elama.findings.evaluate import heldout_specs, read_scores, tool_commands

    paths = {"heldout_domain_de": "/c/d_de.jsonl", "heldout_domain_en": "/c/d_en.jsonl",
             "heldout_general_en": "/c/g_en.jsonl", "tasks": "/c/tasks.jsonl", "general": "/c/g"}
    assert heldout_specs(paths) == ["domain_de=/c/d_de.jsonl", "domain_en=/c/d_en.jsonl",
                                    "general_en=/c/g_en.jsonl"]
    ppl_cmd, shop_cmd = tool_commands(Path("/hf/base"), paths, Path("/out"), 512)
    assert ppl_cmd.startswith("python tools/evaluate.py perplexity --model /hf/base --data ")
    assert "--max-tokens 512" in ppl_cmd and "/out/base.perplexity.json" in ppl_cmd
    assert "--mc loglik" in shop_cmd and "/c/tasks.jsonl" in shop_cmd
    ppl = {"datasets": {"domain_en": {"nll_nats": 100.0, "tokens": 50, "perplexity": math.exp(2)},
                        "domain_de": {"nll_nats": 300.0, "tokens": 50, "perplexity": math.exp(6)},
                        "general_en": {"nll_nats": 30.0, "tokens": 10, "perplexity": math.exp(3)}}}
    shop = {"overall": 0.4, "tasks": {"t": {"acc": 0.4, "acc_norm": 0.5, "n": 10, "score": 0.4}}}
    got = read_scores(ppl, shop)
    assert got["perplexity"]["domain"]["ppl"] == pytest.approx(math.exp(4))  # pooled: 400 / 100
    assert got["perplexity"]["domain"]["by_lang"] == {"en": math.exp(2), "de": math.exp(6)}
    assert got["perplexity"]["general"]["tokens"] == 10
    assert got["shopbench"] == {"score": 0.4,
                                "tasks": {"t": {"acc": 0.4, "acc_norm": 0.5, "n": 10}}}


def test_results_roundtrip_through_json():
    models = study_numbers()
    again = json.loads(json.dumps(models))
    assert [f.holds for f in C.compute_findings(again, LR_VARIANTS, MERGE_ALPHAS, SETTLED, EXACT)] \
        == [f.holds for f in C.compute_findings(models, LR_VARIANTS, MERGE_ALPHAS, SETTLED, EXACT)]


def test_settled_check():
    f = C.check_settled(SETTLED)
    assert f.holds and f.numbers["change"] == pytest.approx(5.0 / 5.1 - 1)
    assert "7.000 -> 5.000" in f.statement and "-2.0%" in f.statement
    assert not C.check_settled([7.0, 5.5, 5.0]).holds
    assert not C.check_settled([5.0]).holds


def test_corpus_is_deterministic_and_holds_out(tmp_path):
    from elama.findings.corpus import CorpusSizes, write_findings_corpus

    sizes = CorpusSizes(general_en_bytes=200_000, general_multi_docs=40, ecommerce_docs=60,
                        heldout_docs=12, tasks_per_task=3)
    a = write_findings_corpus(tmp_path / "a", sizes)
    b = write_findings_corpus(tmp_path / "b", sizes)
    for name, path in a["paths"].items():
        assert open(path, "rb").read() == open(b["paths"][name], "rb").read()
    train = {json.loads(line)["text"] for line in open(a["paths"]["general"])}
    held = [json.loads(line) for line in open(a["paths"]["valid_general"])]
    assert {r["lang"] for r in held} == {"en", *GENERAL_LANGUAGES}
    assert not any(r["text"] in train for r in held)
    assert a["counts"]["ecommerce"] == 60 and a["counts"]["tasks"] == 12
