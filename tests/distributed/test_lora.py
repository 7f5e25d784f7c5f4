"""LoRA on megatron-core's parallel linears: tp=1 and tp=2 train to the same numbers, only adapter
parameters move and reach the optimizer; the saved adapters export as an HF PEFT adapter that
`peft` loads on the exported base with elama's logits, and as a merged HF checkpoint equal to
base + (alpha / r) B A."""
from __future__ import annotations

import json
import os
from functools import partial

import pytest
import torch

from tests.spawn import run_distributed

pytestmark = pytest.mark.distributed

LORA = ["lora.rank=4", "lora.alpha=8", "model.num_layers=2"]
STEPS = 3


def _train(overrides: list, save_dir: str | None):
    from elama import checkpoint
    from elama.config import to_dict
    from elama.data.synthetic import synthetic_microbatches
    from elama.model.lora import trainable_parameters
    from elama.parallel import setup
    from elama.parallel.shards import gather_full_state_dict
    from elama.scoring import compute_logits
    from elama.trainer import train_step
    from tests.model_utils import build_reference_run

    # B random rather than PEFT's zeros, so the adapters change the outputs from step 0
    cfg, dims, model, optimizer = build_reference_run(LORA + overrides)
    in_optimizer = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    t = cfg.train
    data = dict(seed=7, seq_len_tokens=cfg.data.seq_len_tokens, vocab_size=cfg.model.vocab_size,
                micro_batch_size=t.micro_batch_size, dp_rank=setup.dp_rank(), dp=dims.dp)
    step = partial(train_step, model, optimizer, [synthetic_microbatches(**data) for _ in model],
                   num_microbatches=dims.num_microbatches(t.global_batch_size, t.micro_batch_size),
                   seq_len_tokens=cfg.data.seq_len_tokens, micro_batch_size=t.micro_batch_size,
                   clip_grad=cfg.optim.clip_grad)
    init = gather_full_state_dict(model)
    history = [(r.loss, r.grad_norm) for r in (step() for _ in range(STEPS))]
    for chunk in model:
        chunk.eval()
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    logits = compute_logits(model, tokens)
    if save_dir:  # the model part of a trainer checkpoint, enough for export
        iter_dir = os.path.join(save_dir, checkpoint.iter_name(STEPS))
        checkpoint.save_model(model, os.path.join(iter_dir, "model"))
        if dist_rank() == 0:
            config = to_dict(cfg)
            checkpoint.write_meta(iter_dir, {"kind": "train", "step": STEPS, "config": config,
                                             "model": config["model"], "lora": config["lora"]})
            checkpoint.write_tracker(save_dir, STEPS)
    return {"history": history, "params": gather_full_state_dict(model), "init": init,
            "tokens": tokens, "logits": logits, "trainable": trainable_parameters(model),
            "in_optimizer": in_optimizer}


def dist_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    save = tmp_path_factory.mktemp("lora_ckpt")
    tp1 = run_distributed(_train, 1, [], None)[0]
    tp2 = run_distributed(_train, 2, ["parallel.tp=2"], str(save))
    return {"tp1": tp1, "tp2": tp2, "ckpt": save}


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_tp1_and_tp2_agree_and_only_adapters_move(runs):
    ref = runs["tp1"]
    for rank, out in enumerate(runs["tp2"]):
        for step, (got, want) in enumerate(zip(out["history"], ref["history"])):
            assert got[0] == pytest.approx(want[0], rel=1e-5), f"rank {rank} step {step} loss"
            assert got[1] == pytest.approx(want[1], rel=1e-5), f"rank {rank} step {step} grad norm"
        assert set(out["params"]) == set(ref["params"])
        for name in ref["params"]:
            assert _rel(out["params"][name], ref["params"][name]) < 1e-5, f"rank {rank}: {name}"
        torch.testing.assert_close(out["logits"], ref["logits"], rtol=1e-5, atol=1e-5)
    adapters = [n for n in ref["params"] if ".adapter." in n]
    assert len(adapters) == 2 * (2 + 2 + 3 + 2)  # per layer qkv, proj, fc1 (a, b_gate, b_up), fc2
    for name, value in ref["params"].items():
        moved = not torch.equal(value, ref["init"][name])
        assert moved == (".adapter." in name), name
    n_adapter = sum(ref["params"][n].numel() for n in adapters)
    assert ref["trainable"] == ref["in_optimizer"] == n_adapter


def _hf_logits(base_dir: str, adapter_dir: str, merged_dir: str, tokens):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        plain = base(tokens).logits
        peft_model = PeftModel.from_pretrained(base, adapter_dir)
        adapted = peft_model(tokens).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)(tokens).logits
    return {"plain": plain, "peft": adapted, "merged": merged}


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    from elama.convert.export_hf import export_hf
    from elama.convert.mapping import ConversionError
    from tools.convert_checkpoint import main as convert_main

    out = tmp_path_factory.mktemp("lora_export")
    dirs = {k: out / k for k in ("base", "adapter", "merged")}
    export_hf(runs["ckpt"], dirs["base"], lora="base", with_tokenizer=False, progress=False)
    export_hf(runs["ckpt"], dirs["merged"], lora="merge", with_tokenizer=False, progress=False)
    with pytest.raises(ConversionError, match="no LoRA adapters"):
        _export_without_adapters(runs["ckpt"], out)
    code = convert_main(["export", str(runs["ckpt"]), str(dirs["adapter"]), "--peft",
                         str(dirs["base"]), "--no-progress"])
    assert code == 0
    config = json.loads((dirs["adapter"] / "adapter_config.json").read_text())
    return {**dirs, "config": config}


def _export_without_adapters(ckpt, out):
    """A checkpoint without adapters is refused by the PEFT export, naming why."""
    import shutil

    from elama import checkpoint
    from elama.convert.peft import export_peft

    plain = out / "plain"
    shutil.copytree(ckpt, plain)
    iter_dir = checkpoint.resolve(plain)
    meta = checkpoint.read_meta(iter_dir)
    meta.pop("format_version")
    meta["lora"]["rank"] = 0
    meta["config"]["lora"]["rank"] = 0
    checkpoint.write_meta(iter_dir, meta)
    export_peft(plain, out / "never", base_model_name_or_path="x")


def test_peft_adapter_on_the_exported_base_gives_elama_logits(runs, exported):
    want = runs["tp2"][0]["logits"]
    got = run_distributed(_hf_logits, 1, str(exported["base"]), str(exported["adapter"]),
                          str(exported["merged"]), runs["tp2"][0]["tokens"])[0]
    torch.testing.assert_close(got["peft"], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["merged"], want, rtol=1e-5, atol=1e-5)
    assert (got["plain"] - want).abs().max() > 1e-2  # the adapters matter
    assert exported["config"]["r"] == 4 and exported["config"]["lora_alpha"] == 8
    assert set(exported["config"]["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_merged_export_is_base_plus_scaled_adapter_product(exported):
    from safetensors.torch import load_file

    def weights(d):
        return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(f).items()}

    base, merged = weights(exported["base"]), weights(exported["merged"])
    adapter = load_file(exported["adapter"] / "adapter_model.safetensors")
    scaling = 8 / 4
    checked = 0
    for name, w in base.items():
        stem = "base_model.model." + name.removesuffix(".weight")
        if f"{stem}.lora_A.weight" not in adapter:
            assert torch.equal(merged[name], w), name  # norms, embedding, output layer
            continue
        a, b = adapter[f"{stem}.lora_A.weight"], adapter[f"{stem}.lora_B.weight"]
        want = (w.double() + scaling * b.double() @ a.double()).float()
        torch.testing.assert_close(merged[name], want, rtol=0, atol=1e-7)
        checked += 1
    assert checked == 2 * 7
