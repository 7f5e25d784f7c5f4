"""Hugging Face <-> elama conversion proven against transformers: HF -> elama -> HF is bitwise, the
converted model's logits at (tp, pp) = (1,1), (2,1), (1,2), (2,2) equal transformers' with Llama 3.1
rope scaling (shown to matter), a checkpoint saved at tp2 x pp2 exports to the same HF tensors, and
the exported directory loads offline in transformers with a tokenizer equal to tiktoken."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.spawn import run_distributed

ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}
# Weights with std 0.1 (not 0.02) make attention position-sensitive enough at 128 tokens that the
# rope scaling changes logits by far more than the parity tolerance (checked below).
HF_OVERRIDES = dict(vocab_size=128256, bos_token_id=128000, eos_token_id=128001, rope_scaling=ROPE,
                    max_position_embeddings=131072, initializer_range=0.1)
SEQ_TOKENS = 128
TOL = dict(rtol=1e-4, atol=1e-4)
LAYOUTS = {"tp1_pp1": (1, []), "tp2": (2, ["parallel.tp=2"]), "pp2": (2, ["parallel.pp=2"]),
           "tp2_pp2": (4, ["parallel.tp=2", "parallel.pp=2"])}
MULTILINGUAL = ["The quick brown fox jumps over the lazy dog.", "Größenangaben für Damenschuhe: 38–39",
                "Livraison gratuite dès 50 € d'achat !", "¿Cuánto cuesta el envío a Canarias?",
                "Perché il prezzo è così alto?", "送料無料キャンペーン実施中", "这款手机的电池容量是多少？",
                "배송은 얼마나 걸리나요?", "Great deal 🔥🛒👍🏽 — 5★", "  spaces\t\ttabs\n\nnewlines  ",
                "price: $1,299.99 (SKU 00451-B)"]


def _import(src: str, out: str) -> int:
    from elama.convert.import_hf import import_hf

    return import_hf(src, out, progress=False).params_written


def _hf_logits(model_dir, tokens: torch.Tensor, rope_default: bool = False) -> torch.Tensor:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    if rope_default:
        config.rope_parameters = {"rope_type": "default",
                                  "rope_theta": config.rope_parameters["rope_theta"]}
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=torch.float32)
    with torch.no_grad():
        return model(tokens).logits


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from elama.convert.export_hf import export_hf
    from tests.hf_fixtures import make_tiny_hf_llama

    root = tmp_path_factory.mktemp("convert")
    src = make_tiny_hf_llama(root / "hf", seed=5, **HF_OVERRIDES)
    assert run_distributed(_import, 1, str(src), str(root / "elama")) == [2 + 6 * 2 + 1]
    export_hf(root / "elama", root / "hf_out", progress=False)
    tokens = torch.randint(0, 128256, (2, SEQ_TOKENS), generator=torch.Generator().manual_seed(1))
    np.save(root / "tokens.npy", tokens.numpy())
    return {"root": root, "src": src, "elama": root / "elama", "hf_out": root / "hf_out",
            "tokens": tokens, "reference": _hf_logits(src, tokens)}


def _assert_same_hf_tensors(a_dir, b_dir) -> None:
    from elama.convert.hf import HFCheckpointReader

    with HFCheckpointReader(a_dir) as a, HFCheckpointReader(b_dir) as b:
        assert sorted(a.names()) == sorted(b.names())
        for name in a.names():
            x, y = a.get(name), b.get(name)
            assert x.dtype == y.dtype and torch.equal(x, y), name


@pytest.mark.distributed
def test_hf_elama_hf_round_trip_is_bitwise_with_equal_config(converted):
    _assert_same_hf_tensors(converted["src"], converted["hf_out"])
    src = json.loads((converted["src"] / "config.json").read_text())
    out = json.loads((converted["hf_out"] / "config.json").read_text())
    src.pop("transformers_version")
    assert out == src
    meta = json.loads((converted["elama"] / "iter_0000000" / "meta.json").read_text())
    assert meta["kind"] == "weights" and meta["model"]["precision"] == "fp32"
    assert (converted["elama"] / "latest_checkpointed_iteration.txt").read_text().strip() == "0"


def _score(ckpt: str, tokens: str, out: str, overrides: list, resave: str | None) -> None:
    """Logits through tools/logits.py; with resave, through the library, then the loaded chunks are
    saved again from this layout (a checkpoint written at tp x pp, like a trainer's)."""
    if resave is None:
        from tools.logits import main

        assert main([ckpt, tokens, out, *overrides]) == 0
        return
    import dataclasses
    import os
    from pathlib import Path

    from elama import checkpoint
    from elama.parallel import setup
    from elama.parallel.dims import ParallelDims
    from elama.scoring import (build_scoring_config, compute_logits, is_output_rank,
                               load_scoring_model, read_token_ids)

    world = int(os.environ["WORLD_SIZE"])
    cfg, iter_dir = build_scoring_config(ckpt, overrides, world_size=world)
    dims = ParallelDims.from_config(cfg.parallel, world)
    setup.init_distributed(dims, device="cpu", seed=0)
    chunks = load_scoring_model(cfg, dims, iter_dir)
    logits = compute_logits(chunks, read_token_ids(tokens, cfg.model.vocab_size))
    if is_output_rank():
        np.save(out, logits.numpy())
    step_dir = Path(resave) / checkpoint.iter_name(3)
    checkpoint.save_model(chunks, step_dir / "model")
    if setup.dp_rank() == 0 and setup.tp_rank() == 0 and setup.pp_rank() == 0:
        checkpoint.write_meta(step_dir, {"kind": "train", "step": 3,
                                         "model": dataclasses.asdict(cfg.model)})
        checkpoint.write_tracker(resave, 3)


@pytest.mark.distributed
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_logits_match_transformers_at_every_layout(layout, converted):
    world, overrides = LAYOUTS[layout]
    root = converted["root"]
    out = root / f"logits_{layout}.npy"
    resave = str(root / "resaved_tp2_pp2") if layout == "tp2_pp2" else None
    run_distributed(_score, world, str(converted["elama"]), str(root / "tokens.npy"), str(out),
                    overrides, resave)
    got = torch.from_numpy(np.load(out))
    reference = converted["reference"]
    assert got.shape == reference.shape == (2, SEQ_TOKENS, 128256)
    torch.testing.assert_close(got, reference, **TOL)
    if layout == "tp1_pp1":  # the comparison has teeth: without llama3 scaling, logits differ
        unscaled = _hf_logits(converted["src"], converted["tokens"], rope_default=True)
        assert (unscaled - reference).abs().max() > 100 * TOL["atol"]
    if resave:
        from elama.convert.export_hf import export_hf

        export_hf(resave, root / "hf_from_tp2_pp2", progress=False)
        _assert_same_hf_tensors(converted["src"], root / "hf_from_tp2_pp2")


def _load_exported(hf_dir: str, tokens: torch.Tensor, texts: list) -> dict:
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported in this process
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from elama.convert.export_hf import generate_with_transformers
    from elama.tokenizer import Llama3Tokenizer

    tok, tiktoken_tok = AutoTokenizer.from_pretrained(hf_dir), Llama3Tokenizer()
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    dialog = [{"role": "system", "content": "You are a shopping assistant. "},
              {"role": "user", "content": "  Haben Sie diese Jacke in Größe M?\n"}]
    chat = tok.apply_chat_template(dialog, tokenize=True, add_generation_prompt=True)
    with torch.no_grad():
        logits = model(tokens).logits
    prompt, generated, text = generate_with_transformers(hf_dir, "Free shipping on",
                                                         max_new_tokens=6)
    return {"logits": logits, "prompt": prompt, "generated": generated, "text": text,
            "dtype": str(model.dtype),
            "hf_ids": [tok(t, add_special_tokens=False)["input_ids"] for t in texts],
            "hf_bos_ids": [tok(t)["input_ids"] for t in texts],
            "tiktoken_ids": [tiktoken_tok.encode(t) for t in texts],
            "decoded": [tok.decode(tiktoken_tok.encode(t)) for t in texts],
            "chat": list(chat["input_ids"] if hasattr(chat, "keys") else chat),
            "chat_tiktoken": tiktoken_tok.encode_dialog(dialog, add_generation_prompt=True),
            "bos": tiktoken_tok.bos_id}


@pytest.mark.distributed
def test_exported_dir_loads_offline_generates_and_tokenizes_like_tiktoken(converted):
    got = run_distributed(_load_exported, 1, str(converted["hf_out"]), converted["tokens"],
                          MULTILINGUAL)[0]
    assert got["dtype"] == "torch.float32"
    torch.testing.assert_close(got["logits"], converted["reference"], rtol=0, atol=0)
    assert got["generated"][:len(got["prompt"])] == got["prompt"]
    assert len(got["generated"]) == len(got["prompt"]) + 6
    assert isinstance(got["text"], str) and got["text"]
    assert got["prompt"][0] == got["bos"]
    assert got["hf_ids"] == got["tiktoken_ids"]
    assert got["hf_bos_ids"] == [[got["bos"]] + ids for ids in got["tiktoken_ids"]]
    assert got["decoded"] == MULTILINGUAL
    assert got["chat"] == got["chat_tiktoken"]
    files = {p.name for p in converted["hf_out"].iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.safetensors"} <= files
    generation = json.loads((converted["hf_out"] / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [128001, 128008, 128009]


@pytest.mark.distributed
def test_export_refuses_a_checkpoint_that_does_not_match_its_metadata(converted, tmp_path):
    import shutil

    from elama.checkpoint import write_meta, write_tracker
    from elama.convert.export_hf import export_hf
    from elama.convert.mapping import ConversionError

    iter_dir = tmp_path / "iter_0000000"
    shutil.copytree(converted["elama"] / "iter_0000000", iter_dir)
    meta = json.loads((iter_dir / "meta.json").read_text())
    meta["model"].update(num_layers=3, ffn_hidden_size=96)
    write_meta(iter_dir, {k: v for k, v in meta.items() if k != "format_version"})
    write_tracker(tmp_path, 0)
    with pytest.raises(ConversionError) as e:
        export_hf(tmp_path, tmp_path / "out", progress=False)
    assert "decoder.layers.mlp.linear_fc1.weight has shape [2, 256, 64], the model in meta.json " \
           "implies [3, 192, 64]" in str(e.value)
    assert not (tmp_path / "out").exists()


def _import_score_export(src: str, root: str, tokens: torch.Tensor) -> torch.Tensor:
    """Tied embeddings end to end in one process: import, logits at tp=pp=1, export."""
    from pathlib import Path

    from elama.convert.export_hf import export_hf
    from elama.convert.import_hf import import_hf
    from elama.parallel import setup
    from elama.parallel.dims import ParallelDims
    from elama.scoring import build_scoring_config, compute_logits, load_scoring_model

    import_hf(src, Path(root) / "elama", progress=False)
    cfg, iter_dir = build_scoring_config(Path(root) / "elama", [], world_size=1)
    setup.init_single_process()
    try:
        logits = compute_logits(load_scoring_model(cfg, ParallelDims(1, 1, 1, 1, 1, 1), iter_dir),
                                tokens)
    finally:
        setup.destroy_distributed()
    export_hf(Path(root) / "elama", Path(root) / "hf_out", with_tokenizer=False, progress=False)
    return logits


@pytest.mark.distributed
def test_tied_embeddings_convert_both_ways(tmp_path):
    from tests.hf_fixtures import make_tiny_hf_llama

    src = make_tiny_hf_llama(tmp_path / "hf", seed=2, **{**HF_OVERRIDES, "vocab_size": 512},
                             tie_word_embeddings=True)
    tokens = torch.randint(0, 512, (1, SEQ_TOKENS), generator=torch.Generator().manual_seed(3))
    logits = run_distributed(_import_score_export, 1, str(src), str(tmp_path), tokens)[0]
    torch.testing.assert_close(logits, _hf_logits(src, tokens), **TOL)
    _assert_same_hf_tensors(src, tmp_path / "hf_out")
    config = json.loads((tmp_path / "hf_out" / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["vocab_size"] == 512
