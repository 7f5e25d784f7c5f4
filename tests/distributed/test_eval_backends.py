"""The megatron backend (an elama checkpoint converted from a tiny HF Llama) against the
transformers backend on the same weights: token log-probs to 1e-4, the same greedy continuations,
and the same ShopBench --mc loglik picks, at tp=1 and tp=2."""
from __future__ import annotations

import pytest

from tests.spawn import run_distributed

pytestmark = pytest.mark.distributed
HF = dict(vocab_size=128256, bos_token_id=128000, eos_token_id=128001,
          max_position_embeddings=131072,
          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
SEQS = [[128000, 791, 4062, 14198, 39935], [128000, 11180, 11862, 389, 682, 10373, 927, 220, 1135]]


def _import(src: str, out: str) -> None:
    from elama.convert.import_hf import import_hf

    import_hf(src, out, progress=False)


def _score(model: str, overrides: list[str]) -> dict:
    from elama.eval.backends import open_backend
    from elama.eval.loglik import mc_loglik

    b = open_backend(model, overrides, batch_size=2)
    try:
        logprobs = b.token_logprobs(SEQS)
        generated = b.generate([s[:4] for s in SEQS], 5)
        mc = mc_loglik(b, ["Free shipping on", "Colour:"], [["orders", "nothing"], ["navy blue", "7"]],
                       [0, 0])
        return {"logprobs": [lp.tolist() for lp, _ in logprobs],
                "greedy": [g.tolist() for _, g in logprobs], "generated": generated,
                "picks": mc.get("picks"), "picks_norm": mc.get("picks_norm"), "output": b.is_output}
    finally:
        b.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tests.hf_fixtures import make_tiny_hf_llama

    root = tmp_path_factory.mktemp("backends")
    from elama.convert.hf_tokenizer import write_hf_tokenizer
    from elama.tokenizer import load_tokenizer

    hf = make_tiny_hf_llama(root / "hf", seed=7, initializer_range=0.1, **HF)
    for f in hf.glob("tokenizer*"):  # Llama 3's tokenizer, as an export has: the same text ids
        f.unlink()
    write_hf_tokenizer(hf, load_tokenizer(), model_max_length=2048)
    run_distributed(_import, 1, str(hf), str(root / "elama"))
    return {"hf": str(hf), "elama": str(root / "elama"),
            "reference": run_distributed(_score, 1, str(hf), [])[0]}


@pytest.mark.parametrize("world, overrides", [(1, []), (2, ["parallel.tp=2"])])
def test_megatron_backend_matches_transformers(models, world, overrides):
    ref = models["reference"]
    results = run_distributed(_score, world, models["elama"], overrides)
    for got in results:  # every rank holds the results (greedy decoding needs them everywhere)
        for a, b in zip(got["logprobs"], ref["logprobs"]):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-4)
        assert got["greedy"] == ref["greedy"]
        assert got["generated"] == ref["generated"]
        assert len(got["generated"][0]) == 5
    out = [r for r in results if r["output"]]
    assert len(out) == 1 and out[0]["picks"] == ref["picks"] and out[0]["picks_norm"] == ref["picks_norm"]
