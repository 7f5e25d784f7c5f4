"""Tiny Hugging Face Llama 3.1 checkpoints for tests: a random LlamaForCausalLM saved as safetensors
with a config.json in the layout of meta-llama/Llama-3.1-8B on the Hub and a byte-level tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import torch

BOS_TOKEN, EOS_TOKEN = "<|begin_of_text|>", "<|end_of_text|>"

TINY_LLAMA_CONFIG = dict(
    vocab_size=272,  # 256 byte tokens + BOS/EOS (ids 256, 257), padded like Llama pads its vocab
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=256,
    eos_token_id=257,
    tie_word_embeddings=False,
    # Llama 3.1's rope scaling with original_max_position_embeddings small enough that wavelengths
    # above 64 / low_freq_factor tokens (most of head_dim 16's frequencies) are rescaled.
    rope_theta=500000.0,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
)


def _hub_layout(config: dict) -> dict:
    """transformers 5 writes rope_parameters and dtype; the Llama 3.1 release (and what elama must
    read) has top-level rope_theta, rope_scaling and torch_dtype."""
    config = dict(config)
    rope = dict(config.pop("rope_parameters", None) or {})
    if rope:
        config["rope_theta"] = rope.pop("rope_theta")
        config["rope_scaling"] = rope
    if "dtype" in config:
        config["torch_dtype"] = config.pop("dtype")
    return dict(sorted(config.items()))


def write_tiny_tokenizer(out_dir: Path) -> None:
    """A byte-level BPE tokenizer (no merges) over the 256 byte symbols plus BOS and EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS_TOKEN, EOS_TOKEN])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_TOKEN,
                            eos_token=EOS_TOKEN).save_pretrained(str(out_dir))


def make_tiny_hf_llama(out_dir, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                       max_shard_size: str | None = None, **config_overrides) -> Path:
    """Save a random tiny LlamaForCausalLM (safetensors, Hub-layout config, tokenizer) to out_dir.

    seed fixes the weights; dtype is the saved dtype; max_shard_size (e.g. "100KB") makes
    transformers shard the weights; config_overrides replace TINY_LLAMA_CONFIG entries.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    fields = {**TINY_LLAMA_CONFIG, **config_overrides}
    rope = {**fields.pop("rope_scaling"), "rope_theta": fields.pop("rope_theta")}
    config = LlamaConfig(rope_parameters=rope, **fields)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(out), **kwargs)
    config_path = out / "config.json"
    config_path.write_text(json.dumps(_hub_layout(json.loads(config_path.read_text())), indent=2) + "\n")
    write_tiny_tokenizer(out)
    return out
