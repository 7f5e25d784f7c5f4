"""Random Llama-architecture Hugging Face checkpoints of a chosen size for benchmarks, streamed
through elama's sharded safetensors writer so at most one shard is ever in memory.
Usage: python bench/hfgen.py OUT_DIR [--seed 0] [--max-shard-mb 500]"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from elama.convert.hf import ShardedSafetensorsWriter, write_json

# ~1.0e9 parameters: Llama 3.2 1B's trunk (hidden 2048, 16 layers, GQA 32/8) with a 32k vocabulary
# and an MLP of 7168, untied embeddings.
LLAMA_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=7168, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8)


def llama_config(**overrides) -> dict:
    """A config.json in the layout of the Llama 3.1 release on the Hub."""
    config = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                  attention_bias=False, attention_dropout=0.0, mlp_bias=False, rms_norm_eps=1e-5,
                  max_position_embeddings=131072, initializer_range=0.02, bos_token_id=1,
                  eos_token_id=2, tie_word_embeddings=False, torch_dtype="bfloat16",
                  rope_theta=500000.0, use_cache=True, pretraining_tp=1,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                  **LLAMA_1B)
    config.update(overrides)
    config.setdefault("head_dim", config["hidden_size"] // config["num_attention_heads"])
    return config


def llama_tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Hugging Face LlamaForCausalLM tensor names and shapes, in model order."""
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    shapes = {"model.embed_tokens.weight": (v, h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "self_attn.q_proj.weight": (q, h),
                       p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.v_proj.weight": (kv, h),
                       p + "self_attn.o_proj.weight": (h, q), p + "post_attention_layernorm.weight": (h,),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f)})
    shapes["model.norm.weight"] = (h,)
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    return shapes


def param_count(config: dict) -> int:
    return sum(math.prod(s) for s in llama_tensor_shapes(config).values())


def write_random_llama(out_dir, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                       max_shard_bytes: int = 500 * 10**6, std: float = 0.02, **overrides) -> Path:
    """Write a random checkpoint: N(0, std) matrices, 1 + N(0, std) norm weights. The writer is
    planned, so each block goes straight to its place on disk and memory stays at one block."""
    out, config = Path(out_dir), llama_config(**overrides)
    shapes = llama_tensor_shapes(config)
    gen = torch.Generator().manual_seed(seed)
    with ShardedSafetensorsWriter(out, max_shard_bytes) as writer:
        writer.plan((name, shape, dtype) for name, shape in shapes.items())
        for name, shape in shapes.items():
            rows = max(1, (1 << 22) // math.prod(shape[1:]))  # float32 blocks of 16 MB at most
            for r0 in range(0, shape[0], rows):
                block = torch.randn((min(rows, shape[0] - r0), *shape[1:]), generator=gen).mul_(std)
                writer.add_rows(name, r0, (block.add_(1.0) if len(shape) == 1 else block).to(dtype))
    write_json(out / "config.json", config)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-shard-mb", type=int, default=500)
    args = p.parse_args()
    path = write_random_llama(args.out_dir, seed=args.seed, max_shard_bytes=args.max_shard_mb * 10**6)
    print(f"wrote {param_count(llama_config()) / 1e9:.3f}B parameters to {path}")


if __name__ == "__main__":
    main()
