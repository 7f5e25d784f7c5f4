"""The Hugging Face <-> megatron-core name table of Llama 3.1 with its named, inverse-paired tensor
transforms, and config.json <-> ModelConfig (checked, every problem named by its config.json field,
before any tensor moves). No megatron, no transformers: names, shapes and tensor reshuffles only.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from elama.config import ModelConfig
from elama.convert.safetensors_file import CheckpointError

# megatron-core 0.16.1 hard-codes these in RotaryEmbedding._apply_scaling; only the factor is a
# parameter of the model.
MCORE_ROPE_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
PRECISION_OF_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16"}
LLAMA3_BOS_ID, LLAMA3_EOS_ID = 128000, 128001
# transformers' LlamaConfig defaults, used when config.json leaves a field out.
_HF_DEFAULTS = {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048,
                "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
                "mlp_bias": False}


class ConversionError(CheckpointError):
    """A checkpoint that cannot be converted; the message lists every problem found."""

    def __init__(self, where: str, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(f"{where}: cannot convert, {len(self.problems)} problem(s):\n  - "
                         + "\n  - ".join(self.problems))


# ---- transforms. Every HF <-> megatron reshuffle here is a permutation of whole rows (dim 0): a
# megatron tensor is its HF parts' row runs laid side by side. Described as RowPieces, both
# directions (and the converters' streaming reads and writes) use the same table.
@dataclass(frozen=True)
class RowPiece:
    part: int
    """Index of the HF tensor among the entry's parts."""
    src: int
    """First row in that HF tensor."""
    rows: int
    dst: int
    """First row in the megatron tensor."""


def _identity_rows(total: int, m: ModelConfig) -> tuple[tuple[int, ...], list[RowPiece]]:
    return (total,), [RowPiece(0, 0, total, 0)]


def _qkv_rows(total: int, m: ModelConfig) -> tuple[tuple[int, ...], list[RowPiece]]:
    """megatron's linear_qkv rows are, per query group g, [q heads of g (heads_per_group *
    head_dim); k_g (head_dim); v_g (head_dim)]. HF's query head h reads key/value head
    h // heads_per_group (repeat_kv), so group g owns consecutive q heads."""
    groups, hd = m.num_query_groups, m.head_dim
    q_rows = total // groups - 2 * hd
    pieces = []
    for g in range(groups):
        base = g * (q_rows + 2 * hd)
        pieces += [RowPiece(0, g * q_rows, q_rows, base), RowPiece(1, g * hd, hd, base + q_rows),
                   RowPiece(2, g * hd, hd, base + q_rows + hd)]
    return (groups * q_rows, groups * hd, groups * hd), pieces


def _gate_up_rows(total: int, m: ModelConfig) -> tuple[tuple[int, ...], list[RowPiece]]:
    """megatron's SwiGLU linear_fc1 = [gate; up] (silu(gate) * up)."""
    half = total // 2
    return (half, half), [RowPiece(0, 0, half, 0), RowPiece(1, 0, half, half)]


@dataclass(frozen=True)
class Transform:
    name: str
    layout: Callable[[int, ModelConfig], tuple[tuple[int, ...], list[RowPiece]]]
    """(megatron rows, model) -> (each HF part's rows, the pieces in megatron row order)."""

    def pieces(self, megatron_rows: int, m: ModelConfig) -> list[RowPiece]:
        return self.layout(megatron_rows, m)[1]

    def to_megatron(self, tensors: Sequence[torch.Tensor], m: ModelConfig) -> torch.Tensor:
        """HF parts -> the megatron tensor (freshly allocated)."""
        total = sum(len(t) for t in tensors)
        out = torch.empty((total, *tensors[0].shape[1:]), dtype=tensors[0].dtype)
        for p in self.pieces(total, m):
            out[p.dst:p.dst + p.rows] = tensors[p.part][p.src:p.src + p.rows]
        return out

    def to_hf(self, tensor: torch.Tensor, m: ModelConfig) -> tuple[torch.Tensor, ...]:
        """The megatron tensor -> its HF parts (freshly allocated)."""
        part_rows, pieces = self.layout(len(tensor), m)
        parts = tuple(torch.empty((n, *tensor.shape[1:]), dtype=tensor.dtype) for n in part_rows)
        for p in pieces:
            parts[p.part][p.src:p.src + p.rows] = tensor[p.dst:p.dst + p.rows]
        return parts


IDENTITY = Transform("identity", _identity_rows)
QKV = Transform("qkv_interleave_per_group", _qkv_rows)
GATE_UP = Transform("gate_up_concat", _gate_up_rows)
TRANSFORMS = (IDENTITY, QKV, GATE_UP)


@dataclass(frozen=True)
class _Rule:
    local: str
    """Parameter name in megatron-core's local layer spec."""
    te: str
    """Parameter name in the Transformer Engine spec (norms fused into the next linear). Both specs
    save under the TE name, so it is also the distributed-checkpoint key."""
    hf: tuple[str, ...]
    transform: Transform


# Names under decoder.layers.<i>. (megatron) and model.layers.<i>. (HF).
LAYER_RULES = (
    _Rule("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight",
          ("input_layernorm.weight",), IDENTITY),
    _Rule("self_attention.linear_qkv.weight", "self_attention.linear_qkv.weight",
          ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"), QKV),
    _Rule("self_attention.linear_proj.weight", "self_attention.linear_proj.weight",
          ("self_attn.o_proj.weight",), IDENTITY),
    _Rule("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight",
          ("post_attention_layernorm.weight",), IDENTITY),
    _Rule("mlp.linear_fc1.weight", "mlp.linear_fc1.weight",
          ("mlp.gate_proj.weight", "mlp.up_proj.weight"), GATE_UP),
    _Rule("mlp.linear_fc2.weight", "mlp.linear_fc2.weight", ("mlp.down_proj.weight",), IDENTITY),
)
EMBEDDING = _Rule("embedding.word_embeddings.weight", "embedding.word_embeddings.weight",
                  ("model.embed_tokens.weight",), IDENTITY)
FINAL_NORM = _Rule("decoder.final_layernorm.weight", "decoder.final_layernorm.weight",
                   ("model.norm.weight",), IDENTITY)
OUTPUT = _Rule("output_layer.weight", "output_layer.weight", ("lm_head.weight",), IDENTITY)
# Buffers some older HF Llama checkpoints carry; recomputed by every implementation, never weights.
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class TensorEntry:
    """One megatron tensor and the HF tensors it is made of."""

    megatron: str
    """Full (tp=1, pp=1) local-spec parameter name, e.g. decoder.layers.3.input_layernorm.weight."""
    te: str
    """The Transformer Engine spec's name of the same parameter."""
    ckpt_key: str
    """Key in megatron's distributed checkpoint; layer tensors are stacked along a leading axis."""
    layer: int | None
    """Index along that stacked axis (None: not a layer tensor)."""
    shape: tuple[int, ...]
    """Full megatron shape (without the stacked layer axis)."""
    hf: tuple[str, ...]
    hf_shapes: tuple[tuple[int, ...], ...]
    transform: Transform
    group: str
    """Tensors converted together (one progress step): embedding, layer <i>, final_norm, output."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _hf_layer_shapes(m: ModelConfig) -> dict[str, tuple[tuple[int, ...], ...]]:
    h, f, hd = m.hidden_size, m.ffn_hidden_size, m.head_dim
    q, kv = m.num_attention_heads * hd, m.num_query_groups * hd
    return {"input_layernorm.weight": ((h,),), "post_attention_layernorm.weight": ((h,),),
            "self_attn.q_proj.weight": ((q, h), (kv, h), (kv, h)),
            "self_attn.o_proj.weight": ((h, q),),
            "mlp.gate_proj.weight": ((f, h), (f, h)), "mlp.down_proj.weight": ((h, f),)}


def _megatron_shape(hf_shapes: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    """Fused tensors stack their parts' rows (qkv, gate/up); others keep their shape."""
    return (sum(s[0] for s in hf_shapes), *hf_shapes[0][1:])


def build_name_table(m: ModelConfig) -> list[TensorEntry]:
    """Every megatron tensor of the model in HF order (embedding, layers, final norm, output
    layer), each with the HF tensors it is made of. Tied embeddings have no output layer."""
    vocab = ((m.vocab_size, m.hidden_size),)
    shapes = _hf_layer_shapes(m)
    table = [_entry(EMBEDDING, None, vocab, "embedding")]
    for i in range(m.num_layers):
        table += [_entry(r, i, shapes[r.hf[0]], f"layer {i}") for r in LAYER_RULES]
    table.append(_entry(FINAL_NORM, None, ((m.hidden_size,),), "final_norm"))
    if not m.tie_embeddings:
        table.append(_entry(OUTPUT, None, vocab, "output"))
    return table


def _entry(rule: _Rule, layer: int | None, hf_shapes, group: str) -> TensorEntry:
    if layer is None:
        return TensorEntry(rule.local, rule.te, rule.te, None, _megatron_shape(hf_shapes),
                           rule.hf, hf_shapes, rule.transform, group)
    return TensorEntry(f"decoder.layers.{layer}.{rule.local}", f"decoder.layers.{layer}.{rule.te}",
                       f"decoder.layers.{rule.te}", layer, _megatron_shape(hf_shapes),
                       tuple(f"model.layers.{layer}.{n}" for n in rule.hf), hf_shapes,
                       rule.transform, group)


def groups(table: Sequence[TensorEntry]) -> list[tuple[str, list[TensorEntry]]]:
    """The table split into its groups, in order."""
    out: list[tuple[str, list[TensorEntry]]] = []
    for entry in table:
        if not out or out[-1][0] != entry.group:
            out.append((entry.group, []))
        out[-1][1].append(entry)
    return out


def hf_tensor_shapes(table: Sequence[TensorEntry]) -> dict[str, tuple[int, ...]]:
    return {name: shape for e in table for name, shape in zip(e.hf, e.hf_shapes)}


def is_ignored_hf_tensor(name: str) -> bool:
    return name.endswith(IGNORED_HF_SUFFIXES)


# ---- config.json <-> ModelConfig ------------------------------------------------------------
def _rope_fields(config: dict, problems: list[str]) -> tuple[float, dict | None, str]:
    """(rope theta, llama3 scaling dict or None, the field name scaling was read from)."""
    if isinstance(config.get("rope_parameters"), dict):  # transformers >= 5 writes this layout
        params = dict(config["rope_parameters"])
        theta = params.pop("rope_theta", config.get("rope_theta", _HF_DEFAULTS["rope_theta"]))
        where = "rope_parameters"
    else:
        params = config.get("rope_scaling")
        theta, where = config.get("rope_theta", _HF_DEFAULTS["rope_theta"]), "rope_scaling"
    if params is None:
        return theta, None, where
    if not isinstance(params, dict):
        problems.append(f"{where}={params!r} must be an object or null")
        return theta, None, where
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None, where
    if rope_type != "llama3":
        problems.append(f"{where}.rope_type={rope_type!r} is not supported: megatron-core 0.16.1 "
                        "implements Llama 3.1's 'llama3' scaling (or none, 'default') only")
        return theta, None, where
    factor = params.get("factor")
    if not (_is_number(factor) and factor > 0):
        problems.append(f"{where}.factor={factor!r} must be a positive number")
    for key, fixed in MCORE_ROPE_FIXED.items():
        if params.get(key) != fixed:
            problems.append(f"{where}.{key}={params.get(key)!r} is not supported: megatron-core "
                            f"0.16.1 hard-codes {key}={fixed:g} (Llama 3.1's value)")
    return theta, params, where


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(config: dict, key: str, problems: list[str], default=None) -> int:
    value = config.get(key)
    value = default if value is None else value
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        problems.append(f"{key}={value!r} must be a positive integer")
        return 1
    return value


def _check_architecture(config: dict, problems: list[str]) -> None:
    arch = config.get("architectures")
    if arch is not None and arch != ["LlamaForCausalLM"]:
        problems.append(f"architectures={arch!r} is not supported: only ['LlamaForCausalLM']")
    if config.get("model_type", "llama") != "llama":
        problems.append(f"model_type={config.get('model_type')!r} is not supported: only 'llama'")
    if arch is None and "model_type" not in config:
        problems.append("neither architectures nor model_type is set: not a transformers config")
    act = config.get("hidden_act", _HF_DEFAULTS["hidden_act"])
    if act != "silu":
        problems.append(f"hidden_act={act!r} is not supported: Llama's SwiGLU uses 'silu'")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key, False):
            problems.append(f"{key}={config[key]!r} is not supported: Llama has no biases")
    if config.get("quantization_config") is not None:
        problems.append("quantization_config is set: quantized checkpoints are not supported; "
                        "convert the original bf16 weights")


def model_config_from_hf(config: dict, *, name: str = "hf", where: str = "config.json") -> ModelConfig:
    """The ModelConfig of an HF Llama config.json, or a ConversionError naming every unsupported or
    inconsistent field. Precision comes from torch_dtype (the importer checks the tensors)."""
    problems: list[str] = []
    _check_architecture(config, problems)
    ints = {k: _positive_int(config, k, problems) for k in
            ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")}
    heads, hidden = ints["num_attention_heads"], ints["hidden_size"]
    groups_ = _positive_int(config, "num_key_value_heads", problems, default=heads)
    if heads % groups_:
        problems.append(f"num_attention_heads={heads} is not divisible by "
                        f"num_key_value_heads={groups_}")
    if config.get("head_dim") is None and hidden % heads:
        problems.append(f"hidden_size={hidden} is not divisible by num_attention_heads={heads} "
                        "and head_dim is not set")
    head_dim = _positive_int(config, "head_dim", problems, default=hidden // heads or 1)
    if head_dim % 2:
        problems.append(f"head_dim={head_dim} must be even for rotary embeddings")
    max_pos = _positive_int(config, "max_position_embeddings", problems,
                            default=_HF_DEFAULTS["max_position_embeddings"])
    eps = config.get("rms_norm_eps", _HF_DEFAULTS["rms_norm_eps"])
    if not (_is_number(eps) and eps > 0):
        problems.append(f"rms_norm_eps={eps!r} must be a positive number")
    theta, scaling, where_rope = _rope_fields(config, problems)
    if not (_is_number(theta) and theta > 0 and float(theta).is_integer()):
        field = "rope_parameters.rope_theta" if where_rope == "rope_parameters" else "rope_theta"
        problems.append(f"{field}={theta!r} must be a positive whole number (megatron-core "
                        "takes an integer rotary_base)")
    tie = config.get("tie_word_embeddings", _HF_DEFAULTS["tie_word_embeddings"])
    if not isinstance(tie, bool):
        problems.append(f"tie_word_embeddings={tie!r} must be true or false")
    dtype_name = config.get("torch_dtype", config.get("dtype", "bfloat16"))
    if dtype_name not in DTYPE_NAMES.values():
        problems.append(f"torch_dtype={dtype_name!r} is not one of {sorted(DTYPE_NAMES.values())}")
    if problems:
        raise ConversionError(where, problems)
    return ModelConfig(
        name=name, num_layers=ints["num_hidden_layers"], hidden_size=hidden,
        ffn_hidden_size=ints["intermediate_size"], num_attention_heads=heads,
        num_query_groups=groups_, kv_channels=head_dim, vocab_size=ints["vocab_size"],
        max_seq_len_tokens=max_pos, rotary_base=int(theta), rope_scaling=scaling is not None,
        rope_scaling_factor=float(scaling["factor"]) if scaling else 8.0,
        norm_epsilon=float(eps), tie_embeddings=tie,
        init_method_std=float(config.get("initializer_range", 0.02)),
        precision="bf16" if dtype_name == "bfloat16" else "fp32")


def hf_config_from_model(m: ModelConfig, dtype: torch.dtype, *, bos_token_id: int = LLAMA3_BOS_ID,
                         eos_token_id: int | list[int] = LLAMA3_EOS_ID) -> dict:
    """config.json of the HF LlamaForCausalLM equal to m, in the layout of Meta's Llama 3.1
    release (top-level rope_theta and rope_scaling, torch_dtype)."""
    if dtype not in DTYPE_NAMES:
        raise ConversionError("config.json", [f"dtype {dtype} is not one of {list(DTYPE_NAMES)}"])
    scaling = None
    if m.rope_scaling:
        scaling = {"factor": float(m.rope_scaling_factor),
                   "low_freq_factor": float(m.rope_low_freq_factor),
                   "high_freq_factor": float(m.rope_high_freq_factor),
                   "original_max_position_embeddings": int(m.rope_original_max_position_embeddings),
                   "rope_type": "llama3"}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "attention_bias": False, "attention_dropout": float(m.attention_dropout),
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": None,
        "head_dim": m.head_dim, "hidden_act": "silu", "hidden_size": m.hidden_size,
        "initializer_range": m.init_method_std, "intermediate_size": m.ffn_hidden_size,
        "max_position_embeddings": m.max_seq_len_tokens, "mlp_bias": False,
        "num_attention_heads": m.num_attention_heads, "num_hidden_layers": m.num_layers,
        "num_key_value_heads": m.num_query_groups, "pretraining_tp": 1,
        "rms_norm_eps": m.norm_epsilon, "rope_scaling": scaling, "rope_theta": float(m.rotary_base),
        "tie_word_embeddings": m.tie_embeddings, "torch_dtype": DTYPE_NAMES[dtype],
        "use_cache": True, "vocab_size": m.vocab_size,
    }
