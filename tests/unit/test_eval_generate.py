"""ShopBench through generation with a tiny Hugging Face model (every task type and metric), the
same raw outputs as plain transformers `generate`, `--mc loglik` picks checked against log-probs
computed here from the model's logits."""
from __future__ import annotations

import json

import pytest
import torch

from elama.eval.cli import main
from tests.eval_fixtures import EXPECTED_TASKS, MC_PROMPT, use_english_model_as_multilingual, write_shopbench

CAPS = ["--max-new-tokens", "generation=6", "--max-new-tokens", "named_entity_recognition=6",
        "--max-new-tokens", "retrieval=4", "--max-new-tokens", "ranking=4",
        "--max-new-tokens", "multiple-choice=2"]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from tests.hf_fixtures import make_tiny_hf_llama

    return make_tiny_hf_llama(tmp_path_factory.mktemp("hf") / "model", seed=3)


def test_generation_end_to_end_and_predictions_round_trip(tiny_hf, tmp_path, monkeypatch, capsys):
    use_english_model_as_multilingual(monkeypatch)
    tasks, _ = write_shopbench(tmp_path)
    saved, report_path = tmp_path / "generated.jsonl", tmp_path / "report.json"
    assert main(["shopbench", str(tasks), "--model", str(tiny_hf), "--report", str(report_path),
                 "--save-predictions", str(saved), "--batch-size", "4", "--no-progress", *CAPS]) == 0
    report = json.loads(report_path.read_text())
    assert set(report["tasks"]) == set(EXPECTED_TASKS)
    assert all(0.0 <= t["score"] <= 1.0 for t in report["tasks"].values())
    outputs = [json.loads(line)["output"] for line in saved.read_text().splitlines()]
    rows = [json.loads(line) for line in tasks.read_text().splitlines()]
    assert len(outputs) == len(rows)
    # Batched, left-padded greedy answers equal transformers' generate on each prompt alone.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_hf))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_hf))
    for i in (0, len(rows) - 1):
        ids = tok(rows[i]["input_field"], return_tensors="pt")
        cap = 2 if rows[i]["task_type"] == "multiple-choice" else 6
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=cap, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        new = new[:new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
        assert outputs[i] == tok.decode(new, skip_special_tokens=True)
    # The saved raw outputs score to the same report through --predictions.
    again = tmp_path / "again.json"
    assert main(["shopbench", str(tasks), "--predictions", str(saved), "--report", str(again),
                 "--no-progress"]) == 0
    assert json.loads(again.read_text()) == report


def test_mc_loglik_acc_and_acc_norm(tiny_hf, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    use_english_model_as_multilingual(monkeypatch)
    tasks, preds = write_shopbench(tmp_path)
    out = tmp_path / "mc.json"
    assert main(["shopbench", str(tasks), "--model", str(tiny_hf), "--predictions", str(preds),
                 "--mc", "loglik", "--report", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    mc = report["tasks"]["t_mc"]
    assert mc["mc"] == "loglik" and mc["n"] == 3
    # By hand: sum of log p(option | prompt ending in "Answer: ") from the model's own logits.
    tok = AutoTokenizer.from_pretrained(str(tiny_hf))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_hf))
    options = ["sneaker", "apple", "chair"]
    context = MC_PROMPT.rstrip()  # lm-eval moves the trailing space into the continuation
    ctx = tok.encode(context)
    lls = []
    for o in options:
        whole = tok.encode(context + " " + o)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
        lls.append(sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx), len(whole))))
    acc = float(max(range(3), key=lambda k: lls[k]) == 0)
    acc_norm = float(max(range(3), key=lambda k: lls[k] / len(options[k])) == 0)
    assert mc["acc"] == pytest.approx(acc) and mc["acc_norm"] == pytest.approx(acc_norm)
    assert mc["score"] == mc["acc"]
    # the other tasks still come from the predictions
    assert report["tasks"]["t_ner"]["score"] == pytest.approx(EXPECTED_TASKS["t_ner"][0])
