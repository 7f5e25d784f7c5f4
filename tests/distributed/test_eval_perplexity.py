"""Perplexity of demo-style held-out sets (an indexed dataset and a JSONL file): a trainer
checkpoint scored by megatron-core at tp=2 x pp=2 (4 processes) and its Hugging Face export scored
by transformers agree to 1e-4 relative, per dataset and per language."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch import train
from tests.spawn import run_distributed

pytestmark = pytest.mark.distributed
MAX_TOKENS = 512
REPO = Path(__file__).resolve().parents[2]


def _perplexity(model: str, specs: list[str], overrides: list[str]) -> dict:
    from elama.eval.runs import evaluate_perplexity

    return evaluate_perplexity(model, specs, overrides=overrides, max_tokens=MAX_TOKENS,
                               seq_len=128, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def trained(tiny_blend, tmp_path_factory):
    """A 4-step trainer run of the tiny Llama, its HF export and demo-style held-out sets."""
    from elama.data.demo_corpus import write_demo_corpus
    from elama.data.tokenize import tokenize_files

    root = tmp_path_factory.mktemp("ppl")
    run_dir = root / "train"
    argv = ["model=tiny", "model.precision=fp32", "data.seq_len_tokens=32",
            f"data.train_blend=[{{prefix:{tiny_blend['ecommerce']},weight:0.5}},"
            f"{{prefix:{tiny_blend['general']},weight:0.5}}]",
            "train.micro_batch_size=1", "train.global_batch_size=2", "train.train_steps=4",
            "optim.lr=3e-3", "optim.warmup_steps=1", "logging.tensorboard=false",
            "checkpoint.save_interval=4", f"checkpoint.run_dir={run_dir}"]
    assert train(1, argv, root / "logs") == [0], (root / "logs" / "rank0.log").read_text()[-3000:]
    # exported by the command a user runs, in its own process
    subprocess.run([sys.executable, "tools/convert_checkpoint.py", "export", str(run_dir),
                    str(root / "hf")], check=True, cwd=REPO, capture_output=True)
    valid = write_demo_corpus(str(root / "valid"), seed=1, ecommerce_docs=60, general_bytes=30_000)
    tokenize_files(valid["ecommerce"], str(root / "valid_ecommerce"),
                   text_keys=("title", "aspects", "description"), language_key="lang",
                   merge=True, progress=False)
    return {"ckpt": str(run_dir), "hf": str(root / "hf"),
            "specs": [f"ecommerce={root / 'valid_ecommerce'}", f"general={valid['general'][0]}"]}


def test_hf_export_and_trainer_checkpoint_tp2_pp2_agree(trained):
    [hf] = run_distributed(_perplexity, 1, trained["hf"], trained["specs"], [])
    ranks = run_distributed(_perplexity, 4, trained["ckpt"], trained["specs"],
                            ["parallel.tp=2", "parallel.pp=2"])
    reports = [r for r in ranks if r]
    assert len(reports) == 1  # one output rank writes
    mg = reports[0]
    for name in ("ecommerce", "general"):
        a, b = hf["datasets"][name], mg["datasets"][name]
        assert a["tokens"] == b["tokens"] == MAX_TOKENS and a["bytes"] == b["bytes"] > 0
        print(f"{name}: perplexity hf {a['perplexity']:.6f} tp2xpp2 {b['perplexity']:.6f} "
              f"(rel {abs(b['perplexity'] / a['perplexity'] - 1):.2e}); bits/byte hf "
              f"{a['bits_per_byte']:.6f} tp2xpp2 {b['bits_per_byte']:.6f}")
        assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-4)
        assert b["bits_per_byte"] == pytest.approx(a["bits_per_byte"], rel=1e-4)
        assert a["languages"].keys() == b["languages"].keys()
        for lang in a["languages"]:
            assert b["languages"][lang]["perplexity"] == pytest.approx(
                a["languages"][lang]["perplexity"], rel=1e-4)
    # The indexed set has several languages in one .idx: reported as mixed, with the manifest's counts.
    eco = mg["datasets"]["ecommerce"]
    assert list(eco["languages"]) == ["mixed"] and len(eco["manifest_documents_by_language"]) > 1
    assert hf["datasets"]["general"]["perplexity"] > 1.0
    json.dumps(mg)  # the report is plain JSON
