"""The lm-eval adapter (`--model elama`): its log-likelihoods equal elama's own and lm-eval's HF
model's for the same model and text, and local task YAMLs over JSONL written here (multiple
choice, rolling log-likelihood, generate_until) run through `tools/evaluate.py lm-eval`."""
from __future__ import annotations

import json

import pytest

MC_DOCS = [{"question": "Which one is a shoe?", "choices": ["sneaker", "apple", "chair"], "answer": 0},
           {"question": "Which one is a fruit?", "choices": ["desk", "pear"], "answer": 1},
           {"question": "Free shipping on", "choices": ["orders over 50", "nothing"], "answer": 0}]
TEXTS = ["Free shipping on all orders over 50 euros.", "Kostenloser Versand ab 50 €!"]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from tests.hf_fixtures import make_tiny_hf_llama

    return make_tiny_hf_llama(tmp_path_factory.mktemp("hf") / "model", seed=4)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    (root / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in MC_DOCS))
    (root / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))

    def data(name):
        return f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / name}\ntest_split: test\n"

    (root / "mc.yaml").write_text(
        "task: elama_toy_mc\n" + data("mc.jsonl") + "output_type: multiple_choice\n"
        "doc_to_text: \"{{question}}\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (root / "ppl.yaml").write_text(
        "task: elama_toy_ppl\n" + data("text.jsonl") + "output_type: loglikelihood_rolling\n"
        "doc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    (root / "gen.yaml").write_text(
        "task: elama_toy_gen\n" + data("text.jsonl") + "output_type: generate_until\n"
        "doc_to_text: \"{{text[:10]}}\"\ndoc_to_target: \"{{text[10:]}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 4\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return root


def _instances(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihoods_equal_elama_and_lm_eval_hf(tiny_hf):
    from lm_eval.models.huggingface import HFLM

    from elama.eval import loglik
    from elama.eval.lm_eval_model import ElamaLM

    ours = ElamaLM(pretrained=str(tiny_hf), batch_size=2)
    hf = HFLM(pretrained=str(tiny_hf), batch_size=2, device="cpu", dtype="float32")
    pairs = [("Free shipping", " on orders"), ("Which one is a shoe? ", "sneaker"), ("", "Hello")]
    got = ours.loglikelihood(_instances("loglikelihood", pairs), disable_tqdm=True)
    own = loglik.loglikelihood(ours.backend, pairs)
    ref = hf.loglikelihood(_instances("loglikelihood", pairs), disable_tqdm=True)
    for (a, ga), (b, gb), (c, gc) in zip(got, own, ref):
        assert a == pytest.approx(b, abs=1e-9) and ga == gb
        assert a == pytest.approx(c, abs=1e-4) and ga == gc
    assert all(ll < 0 for ll, _ in got)
    rolling = ours.loglikelihood_rolling(_instances("loglikelihood_rolling", [(t,) for t in TEXTS]),
                                         disable_tqdm=True)
    ref_rolling = hf.loglikelihood_rolling(_instances("loglikelihood_rolling", [(t,) for t in TEXTS]),
                                           disable_tqdm=True)
    assert rolling == pytest.approx(ref_rolling, abs=1e-4)


def test_rolling_windows_predict_every_token_once():
    from elama.eval.loglik import rolling_windows

    ids = list(range(10, 20))
    windows = rolling_windows(ids, prefix=1, max_length=4)
    assert windows[0] == ([1], [10, 11, 12, 13])
    # the input (context + predicted minus the last) fills max_length where the text allows
    assert windows[1] == ([13], [14, 15, 16, 17])
    assert windows[2] == ([15, 16, 17], [18, 19])
    assert [t for _, p in windows for t in p] == ids
    from lm_eval import utils

    ref = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(ids, 1, 4, 1)]
    assert [tuple(map(list, w)) for w in ref] == windows


def test_lm_eval_cli_runs_local_tasks_on_elama(tiny_hf, task_dir, tmp_path, monkeypatch):
    from elama.eval.cli import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    out = tmp_path / "results"
    main(["lm-eval", "--model", "elama", "--model_args", f"pretrained={tiny_hf}", "--batch_size", "2",
          "--tasks", "elama_toy_mc,elama_toy_ppl,elama_toy_gen", "--include_path", str(task_dir),
          "--output_path", str(out), "--log_samples"])
    [results_file] = list(out.rglob("results_*.json"))
    results = json.loads(results_file.read_text())["results"]
    assert set(results) == {"elama_toy_mc", "elama_toy_ppl", "elama_toy_gen"}
    # acc and acc_norm from the adapter's log-likelihoods, recomputed here per lm-eval's rules
    from elama.eval.loglik import loglikelihood
    from elama.eval.lm_eval_model import ElamaLM

    backend = ElamaLM(pretrained=str(tiny_hf)).backend
    acc = acc_norm = 0
    for d in MC_DOCS:
        lls = [ll for ll, _ in loglikelihood(backend, [(d["question"], " " + c) for c in d["choices"]])]
        acc += max(range(len(lls)), key=lambda k: lls[k]) == d["answer"]
        acc_norm += max(range(len(lls)), key=lambda k: lls[k] / len(d["choices"][k])) == d["answer"]
    assert results["elama_toy_mc"]["acc,none"] == pytest.approx(acc / len(MC_DOCS))
    assert results["elama_toy_mc"]["acc_norm,none"] == pytest.approx(acc_norm / len(MC_DOCS))
    assert results["elama_toy_ppl"]["bits_per_byte,none"] > 0
    assert "exact_match,none" in results["elama_toy_gen"]
