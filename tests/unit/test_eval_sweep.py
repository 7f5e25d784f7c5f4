"""merge-sweep through the CLI (csv, Markdown, PNG; alpha 0 and 1 score as the base and the
model themselves) and the demo's evaluation on the same small models and held-out JSONL."""
from __future__ import annotations

import csv
import json

import pytest

HF = dict(vocab_size=128256, bos_token_id=128000, eos_token_id=128001)
DOMAIN = ["Wireless headphones, navy blue, free returns within 30 days.",
          "Laufschuhe aus recyceltem Polyester, Größe 42."]
GENERAL = ["Return the sum of a and b.", "Open the file and return a stream."]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.hf_fixtures import make_tiny_hf_llama

    root = tmp_path_factory.mktemp("sweep")
    base = make_tiny_hf_llama(root / "base", seed=1, **HF)
    model = make_tiny_hf_llama(root / "model", seed=2, **HF)
    for name, texts in (("domain", DOMAIN), ("general", GENERAL)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"text": t, "lang": "en"}) + "\n"
                                                    for t in texts))
    return {"root": root, "base": base, "model": model,
            "domain": f"domain={root / 'domain.jsonl'}", "general": f"general={root / 'general.jsonl'}"}


def _ppl(model, spec) -> float:
    from elama.eval.runs import evaluate_perplexity

    return evaluate_perplexity(model, [spec], progress=False)["datasets"][spec.split("=")[0]]["perplexity"]


def test_merge_sweep_cli_writes_table_and_plot(setup, capsys):
    from elama.eval.cli import main

    out = setup["root"] / "out"
    assert main(["merge-sweep", "--base", str(setup["base"]), "--model", str(setup["model"]),
                 "--alphas", "0,0.5,1", "--out", str(out), "--domain-data", setup["domain"],
                 "--general-data", setup["general"], "--no-progress"]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [float(r["alpha"]) for r in rows] == [0.0, 0.5, 1.0]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| alpha | domain (perplexity) | general (perplexity) |" in printed
    assert f"plot: {out / 'sweep.png'}" in printed
    for row, model in ((rows[0], setup["base"]), (rows[2], setup["model"])):
        assert float(row["domain"]) == pytest.approx(_ppl(model, setup["domain"]), rel=1e-5)
        assert float(row["general"]) == pytest.approx(_ppl(model, setup["general"]), rel=1e-5)
    assert float(rows[1]["domain"]) not in (float(rows[0]["domain"]), float(rows[2]["domain"]))


def test_merge_sweep_refuses_bad_data_before_merging(setup, capsys):
    from elama.eval.cli import main

    out = setup["root"] / "bad"
    assert main(["merge-sweep", "--base", str(setup["base"]), "--model", str(setup["model"]),
                 "--alphas", "0,1", "--out", str(out), "--domain-data", "d=/nonexistent.jsonl",
                 "--general-data", setup["general"]]) == 2
    assert "/nonexistent.jsonl: no such file" in capsys.readouterr().err and not out.exists()


def test_demo_evaluation_prints_before_after_and_sweep(setup, capsys):
    from elama.eval.demo import evaluate_demo

    result = evaluate_demo(setup["model"], setup["domain"], setup["general"], setup["root"] / "demo")
    printed = capsys.readouterr().out
    assert "before training" in printed and "after training" in printed
    assert f"plot: {result['plot']}" in printed and len(result["rows"]) == 3
    after = next(r for r in result["rows"] if r["alpha"] == 1.0)
    assert after["domain"] == pytest.approx(_ppl(setup["model"], setup["domain"]), rel=1e-5)


def test_perplexity_cli_report_per_language_and_bad_rows(setup, tmp_path, capsys):
    from elama.eval.cli import main

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"text": DOMAIN[0], "lang": "en"}) + "\n"
                     + json.dumps({"text": DOMAIN[1], "lang": "de"}) + "\n")
    out = tmp_path / "ppl.json"
    assert main(["perplexity", "--model", str(setup["model"]), "--data", f"shop={mixed}",
                 "--report", str(out), "--no-progress"]) == 0
    shop = json.loads(out.read_text())["datasets"]["shop"]
    assert sorted(shop["languages"]) == ["de", "en"] and shop["documents"] == 2
    langs = shop["languages"].values()
    assert shop["tokens"] == sum(s["tokens"] for s in langs)
    assert shop["nll_nats"] == pytest.approx(sum(s["nll_nats"] for s in langs))
    assert shop["bytes"] == len(DOMAIN[0].encode()) + len(DOMAIN[1].encode())  # text bytes, no BOS/EOS
    assert "| shop | de | 1 |" in capsys.readouterr().out
    mixed.write_text(json.dumps({"body": "x"}) + "\n")
    bad = tmp_path / "bad.json"
    assert main(["perplexity", "--model", str(setup["model"]), "--data", f"shop={mixed}",
                 "--report", str(bad)]) == 2
    assert f"{mixed}: 1 problem(s)" in (err := capsys.readouterr().err) and "line 1: field 'text'" in err
    assert not bad.exists()


def test_chat_template_prompts_are_llama3_dialogs(setup, tmp_path):
    """--chat-template on an export (Llama 3 tokenizer files) gives elama's own dialog ids; a
    tokenizer without a template is refused."""
    import shutil

    from elama.convert.hf_tokenizer import write_hf_tokenizer
    from elama.eval.backends import HFBackend
    from elama.eval.shopbench import EvalInputError
    from elama.tokenizer import load_tokenizer

    with pytest.raises(EvalInputError, match="no chat template"):
        HFBackend(setup["model"]).encode_prompt("hi", chat=True)
    model = tmp_path / "chat"
    shutil.copytree(setup["model"], model)
    for f in model.glob("tokenizer*"):
        f.unlink()
    write_hf_tokenizer(model, load_tokenizer(), model_max_length=2048)
    text = "Which one is a shoe?\n0. sneaker\n1. apple\nAnswer: "
    expected = load_tokenizer().encode_dialog([{"role": "user", "content": text}],
                                              add_generation_prompt=True)
    assert HFBackend(model).encode_prompt(text, chat=True) == expected
