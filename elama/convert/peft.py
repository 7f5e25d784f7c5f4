"""LoRA adapters of an elama checkpoint on the HF side: an HF PEFT adapter directory
(adapter_config.json + adapter_model.safetensors, loadable by `peft` on the exported base), or
the adapters merged into the exported weights, W + (alpha / r) B A, tensor by tensor.

A megatron adapter maps to HF modules through the same inverse-paired transforms as the weights:
linear_qkv's B splits into q/k/v rows per query group (its A is shared), linear_fc1's B is stored
as gate and up halves, linear_proj and linear_fc2 map one to one.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from elama import checkpoint
from elama.convert.dist_reader import DistCheckpointReader
from elama.convert.hf import check_output_dir, staged_output_dir, write_json
from elama.convert.mapping import QKV, ConversionError

logger = logging.getLogger(__name__)

ADAPTER_MARK = ".adapter."
# megatron target -> (module path under decoder.layers.<i>., HF modules under model.layers.<i>.)
TARGET_MODULES = {
    "linear_qkv": ("self_attention.linear_qkv", ("self_attn.q_proj", "self_attn.k_proj",
                                                 "self_attn.v_proj")),
    "linear_proj": ("self_attention.linear_proj", ("self_attn.o_proj",)),
    "linear_fc1": ("mlp.linear_fc1", ("mlp.gate_proj", "mlp.up_proj")),
    "linear_fc2": ("mlp.linear_fc2", ("mlp.down_proj",)),
}
PEFT_PREFIX = "base_model.model."


def is_adapter_key(key: str) -> bool:
    return ADAPTER_MARK in key


def checkpoint_lora(meta: dict) -> dict | None:
    """The LoRA settings a checkpoint was trained with (None: no adapters)."""
    lora = meta.get("lora") or (meta.get("config") or {}).get("lora")
    return lora if lora and lora.get("rank", 0) > 0 else None


def _b_keys(target: str) -> tuple[str, ...]:
    return ("b_gate", "b_up") if target == "linear_fc1" else ("b",)


def read_layer_adapters(reader: DistCheckpointReader, layer: int, lora: dict
                        ) -> dict[str, tuple[torch.Tensor, list[torch.Tensor]]]:
    """{target: (A [r, in], [B [rows, r], ...])} of one layer, full tensors."""
    out = {}
    for target in lora["targets"]:
        base = f"decoder.layers.{TARGET_MODULES[target][0]}{ADAPTER_MARK}"
        keys = [base + "a"] + [base + b for b in _b_keys(target)]
        missing = [k for k in keys if k not in reader.tensors]
        if missing:
            raise ConversionError(str(reader.path), [f"adapter tensor {k} is missing (lora "
                                                     f"targets {lora['targets']})" for k in missing])
        got = reader.read_layer(keys, layer)
        out[target] = (got[keys[0]], [got[k] for k in keys[1:]])
    return out


def hf_pairs(target: str, a: torch.Tensor, bs: list[torch.Tensor], m) -> list[tuple[str, torch.Tensor,
                                                                                 torch.Tensor]]:
    """(HF module, lora_A, lora_B) per HF module the megatron adapter stands for."""
    names = TARGET_MODULES[target][1]
    parts = QKV.to_hf(bs[0], m) if target == "linear_qkv" else bs
    return [(name, a, b) for name, b in zip(names, parts)]


def merged_delta(a: torch.Tensor, bs: list[torch.Tensor], scaling: float) -> torch.Tensor:
    """(alpha / r) B A in the megatron layout of the wrapped weight (fc1: [gate; up])."""
    return scaling * (torch.cat(bs, dim=0).double() @ a.double())


def merge_into_group(loaded: dict, entries, reader: DistCheckpointReader, lora: dict) -> None:
    """Add each adapter's product to the weights of one layer group (in place, float64 sum)."""
    layer = entries[0].layer
    if layer is None:
        return
    scaling = lora["alpha"] / lora["rank"]
    for target, (a, bs) in read_layer_adapters(reader, layer, lora).items():
        key = f"decoder.layers.{TARGET_MODULES[target][0]}.weight"
        weight = loaded[key]
        loaded[key] = (weight.double() + merged_delta(a, bs, scaling)).to(weight.dtype)


def export_peft(ckpt: str | Path, out: str | Path, *, base_model_name_or_path: str,
                dtype: torch.dtype | None = None, force: bool = False) -> dict:
    """Write the checkpoint's adapters as an HF PEFT LoRA directory; returns adapter_config."""
    from safetensors.torch import save_file

    from elama.scoring import model_config_from_meta

    iter_dir = checkpoint.resolve(ckpt)
    meta = checkpoint.read_meta(iter_dir)
    lora = checkpoint_lora(meta)
    if lora is None:
        raise ConversionError(str(iter_dir), ["the checkpoint has no LoRA adapters (lora.rank=0): "
                                              "export it as a full HF model instead"])
    m = model_config_from_meta(meta, iter_dir / "meta.json")
    reader = DistCheckpointReader(iter_dir / "model")
    tensors = {}
    for layer in range(m.num_layers):
        for target, (a, bs) in read_layer_adapters(reader, layer, lora).items():
            for name, lora_a, lora_b in hf_pairs(target, a, bs, m):
                stem = f"{PEFT_PREFIX}model.layers.{layer}.{name}"
                tensors[f"{stem}.lora_A.weight"] = lora_a.to(dtype or lora_a.dtype).clone()
                tensors[f"{stem}.lora_B.weight"] = lora_b.to(dtype or lora_b.dtype).contiguous()
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora["rank"],
              "lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"], "bias": "none",
              "target_modules": sorted({n.split(".")[-1] for t in lora["targets"]
                                        for n in TARGET_MODULES[t][1]}),
              "base_model_name_or_path": base_model_name_or_path, "fan_in_fan_out": False,
              "inference_mode": True, "use_rslora": False, "init_lora_weights": True,
              "modules_to_save": None}
    check_output_dir(out, force=force)
    with staged_output_dir(out, force=force) as tmp:
        save_file(tensors, str(Path(tmp) / "adapter_model.safetensors"), metadata={"format": "pt"})
        write_json(Path(tmp) / "adapter_config.json", config)
        # provenance apart from adapter_config.json, which peft parses into LoraConfig
        write_json(Path(tmp) / "elama_adapter.json", {"checkpoint": str(iter_dir),
                                                      "base": meta.get("base"), "lora": lora})
    logger.info("exported %d adapter tensors of %s -> %s", len(tensors), iter_dir, out)
    return config
