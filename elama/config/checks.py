"""Validation of a composed config: only checks, collects every problem, raises one ConfigError
naming the override that fixes each."""
from __future__ import annotations

import importlib.util
import math
from typing import Callable, Iterable, List

from elama.config.schema import (
    CORE_ATTENTION, DATA_SOURCES, FP8_FORMATS, LORA_TARGETS, SFT_UNITS, TRAIN_MODES, FP8_RECIPES, NONFINITE_POLICIES, PRECISIONS, RECOMPUTE, SCHEDULES,
    ConfigError, ElamaConfig, ParallelConfig, TrainConfig,
)


def derived_dp(cfg: ElamaConfig, world_size: int) -> int:
    """Data-parallel degree of the layout, 0 when world_size does not split into it."""
    p = cfg.parallel
    model_parallel = p.tp * p.pp * p.cp
    if model_parallel < 1 or world_size % model_parallel:
        return 0
    return world_size // model_parallel


Check = Callable[[ElamaConfig, int], List[str]]


def validate(cfg: ElamaConfig, world_size: int, *, planning: bool = False,
             extra_checks: Iterable[Check] = ()) -> None:
    """Raise one ConfigError listing every problem; return None when the config is runnable.

    `planning=True` checks a layout for other machines (an H100 cluster from a laptop): it skips
    what only the run itself needs (CUDA, Transformer Engine, named data). `extra_checks` are
    further checkers (e.g. the blend's manifests) whose problems join the same report.
    """
    problems: List[str] = []
    for check in (_check_model, _check_parallel, _check_batch, _check_optim, _check_data,
                  _check_sft):
        problems += check(cfg, world_size)
    if not planning:
        problems += _check_run_inputs(cfg)
    for check in extra_checks:
        problems += check(cfg, world_size)
    if problems:
        raise ConfigError(problems)


def _at_least(section: str, obj, names: Iterable[str], minimum: int) -> List[str]:
    return [f"{section}.{name}={getattr(obj, name)} must be >= {minimum}"
            for name in names if getattr(obj, name) < minimum]


def _choice(value, options, override: str) -> List[str]:
    return [] if value in options else [f"{override}={value!r} is not one of {list(options)}"]


def _check_model(cfg: ElamaConfig, world_size: int) -> List[str]:
    m = cfg.model
    out = _at_least("model", m, ("num_layers", "hidden_size", "ffn_hidden_size",
                                 "num_attention_heads", "num_query_groups", "vocab_size",
                                 "max_seq_len_tokens"), 1)
    if out:
        return out
    if m.num_attention_heads % m.num_query_groups:
        out.append(f"model.num_attention_heads={m.num_attention_heads} is not divisible by "
                   f"model.num_query_groups={m.num_query_groups}")
    if m.kv_channels is None and m.hidden_size % m.num_attention_heads:
        out.append(f"model.hidden_size={m.hidden_size} is not divisible by "
                   f"model.num_attention_heads={m.num_attention_heads}; set model.kv_channels")
    if m.head_dim % 2:
        out.append(f"head dim {m.head_dim} must be even for RoPE (model.kv_channels)")
    out += _choice(m.transformer_impl, ("local", "te"), "model.transformer_impl")
    out += _choice(m.precision, PRECISIONS, "model.precision")
    out += _choice(m.fp8_format, FP8_FORMATS, "model.fp8_format")
    out += _choice(m.fp8_recipe, FP8_RECIPES, "model.fp8_recipe")
    out += _choice(m.fp8_amax_compute_algo, ("max", "most_recent"), "model.fp8_amax_compute_algo")
    out += _choice(m.recompute, RECOMPUTE, "model.recompute")
    out += _choice(m.core_attention, CORE_ATTENTION, "model.core_attention")
    out += _choice(m.recompute_method, ("uniform", "block"), "model.recompute_method")
    if m.precision == "fp8" and m.transformer_impl != "te":
        out.append("model.precision=fp8 needs Transformer Engine: set model.transformer_impl=te")
    if m.rope_scaling and (m.rope_low_freq_factor, m.rope_high_freq_factor,
                           m.rope_original_max_position_embeddings) != (1.0, 4.0, 8192):
        out.append("megatron-core 0.16.1 hard-codes Llama 3.1's rope scaling (low_freq_factor=1, "
                   "high_freq_factor=4, original_max_position_embeddings=8192); got "
                   f"model.rope_low_freq_factor={m.rope_low_freq_factor}, model.rope_high_freq_"
                   f"factor={m.rope_high_freq_factor}, model.rope_original_max_position_embeddings="
                   f"{m.rope_original_max_position_embeddings}")
    return out


def _check_parallel(cfg: ElamaConfig, world_size: int) -> List[str]:
    p, m = cfg.parallel, cfg.model
    out = _at_least("parallel", p, ("tp", "pp", "vpp", "cp"), 1)
    if out or _check_model(cfg, world_size):
        return out  # divisibility below needs sane degrees and a sane model
    model_parallel = p.tp * p.pp * p.cp
    if world_size % model_parallel:
        out.append(f"world_size={world_size} is not divisible by tp*pp*cp={p.tp}*{p.pp}*{p.cp}="
                   f"{model_parallel}: change parallel.tp/pp/cp or the number of processes")
    elif p.dp not in (-1, world_size // model_parallel):
        out.append(f"parallel.dp={p.dp} but world_size={world_size} / (tp*pp*cp={model_parallel}) "
                   f"= {world_size // model_parallel}: set parallel.dp=-1 to derive it")
    for what, value in (("model.num_attention_heads", m.num_attention_heads),
                        ("model.num_query_groups", m.num_query_groups),
                        ("model.ffn_hidden_size", m.ffn_hidden_size),
                        ("model.vocab_size", m.vocab_size)):
        if value % p.tp:
            out.append(f"{what}={value} is not divisible by tp={p.tp} (parallel.tp)")
    if m.num_layers % (p.pp * p.vpp):
        out.append(f"model.num_layers={m.num_layers} is not divisible by pp*vpp={p.pp}*{p.vpp}="
                   f"{p.pp * p.vpp} (parallel.pp / parallel.vpp)")
    if p.vpp > 1 and p.pp < 2:
        out.append(f"parallel.vpp={p.vpp} interleaves pipeline stages and needs parallel.pp >= 2")
    if p.sequence_parallel and p.tp < 2:
        out.append("parallel.sequence_parallel=true needs parallel.tp >= 2")
    if p.cp > 1:  # refused until the per-cp-rank split and the dp x cp loss reduction exist
        out.append(f"parallel.cp={p.cp}: context parallelism is not supported yet (nothing splits "
                   "each sequence over the cp ranks, nor reduces the loss over data x context "
                   "parallel, so it would train on wrong numbers); set parallel.cp=1")
    if p.overlap_param_gather and not p.distributed_optimizer:
        out.append("parallel.overlap_param_gather=true needs parallel.distributed_optimizer=true")
    return out


def _check_batch(cfg: ElamaConfig, world_size: int) -> List[str]:
    t, p = cfg.train, cfg.parallel
    out = _at_least("train", t, ("micro_batch_size", "global_batch_size", "train_steps",
                                 "log_interval"), 1)
    out += _at_least("train", t, ("eval_interval", "eval_steps", "exit_interval"), 0)
    out += _choice(t.nonfinite, NONFINITE_POLICIES, "train.nonfinite")
    dp = derived_dp(cfg, world_size)  # 0 without a valid layout (reported by _check_parallel)
    if not out and dp >= 1:
        out += _check_batch_split(t, p, dp)
    seq = cfg.data.seq_len_tokens
    if seq > cfg.model.max_seq_len_tokens:
        out.append(f"data.seq_len_tokens={seq} exceeds the model's "
                   f"model.max_seq_len_tokens={cfg.model.max_seq_len_tokens}")
    if p.sequence_parallel and seq % p.tp:
        out.append(f"data.seq_len_tokens={seq} is not divisible by tp={p.tp} (sequence parallel)")
    if p.cp > 1 and seq % (2 * p.cp):
        out.append(f"data.seq_len_tokens={seq} is not divisible by 2*cp={2 * p.cp}")
    return out


def _check_batch_split(t: TrainConfig, p: ParallelConfig, dp: int) -> List[str]:
    per_step = t.micro_batch_size * dp
    if t.global_batch_size % per_step:
        return [f"train.global_batch_size={t.global_batch_size} is not divisible by "
                f"micro_batch_size*dp={t.micro_batch_size}*{dp}={per_step}"]
    if p.vpp > 1 and (t.global_batch_size // per_step) % p.pp:
        return [f"interleaved pipelining needs microbatches per step "
                f"({t.global_batch_size // per_step}) divisible by pp={p.pp}: "
                "change train.global_batch_size or train.micro_batch_size"]
    return []


def _check_optim(cfg: ElamaConfig, world_size: int) -> List[str]:
    o, out = cfg.optim, []
    out += _choice(o.schedule, SCHEDULES, "optim.schedule")
    if not o.lr > 0:
        out.append(f"optim.lr={o.lr} must be > 0")
    if not 0 <= o.min_lr <= o.lr:
        out.append(f"optim.min_lr={o.min_lr} must be within [0, optim.lr={o.lr}]")
    if o.warmup_steps < 0 or o.warmup_steps > cfg.train.train_steps:
        out.append(f"optim.warmup_steps={o.warmup_steps} must be within "
                   f"[0, train.train_steps={cfg.train.train_steps}]")
    if o.decay_steps is not None and o.decay_steps < 1:
        out.append(f"optim.decay_steps={o.decay_steps} must be >= 1 (or null)")
    if o.schedule == "wsd" and o.wsd_decay_steps < 1:
        out.append(f"optim.schedule=wsd needs optim.wsd_decay_steps >= 1, got {o.wsd_decay_steps}")
    out += _at_least("optim", o, ("weight_decay", "clip_grad", "adam_eps"), 0)
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(o, name) < 1:
            out.append(f"optim.{name}={getattr(o, name)} must be within [0, 1)")
    return out


def _check_data(cfg: ElamaConfig, world_size: int) -> List[str]:
    d, out = cfg.data, []
    out += _choice(d.source, DATA_SOURCES, "data.source")
    out += _at_least("data", d, ("seq_len_tokens",), 1)
    for i, entry in enumerate(d.train_blend):
        if not (entry.weight > 0 and math.isfinite(entry.weight)):
            out.append(f"data.train_blend[{i}].weight={entry.weight} must be a positive number")
    return out


def _check_run_inputs(cfg: ElamaConfig) -> List[str]:
    """What this machine and this run must have (skipped when planning for another machine)."""
    import torch

    m, out = cfg.model, []
    if cfg.data.source == "blend" and not cfg.data.train_blend:
        out.append("data.source=blend but data.train_blend is empty: name tokenized prefixes "
                   "(data=<preset> or data.train_blend=[{prefix: ..., weight: ...}]) or set "
                   "data=synthetic explicitly")
    out += _choice(cfg.device, ("cpu", "cuda"), "device")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        out.append("device=cuda but torch sees no CUDA GPU on this machine: use device=cpu")
    lg = cfg.logging
    if lg.wandb_project:
        out += _choice(lg.wandb_mode, ("offline", "online", "disabled"), "logging.wandb_mode")
        if importlib.util.find_spec("wandb") is None:
            out.append(f"logging.wandb_project={lg.wandb_project} needs wandb, which is not "
                       "installed: pip install 'elama[wandb]', or unset logging.wandb_project")
    te_wanted = m.transformer_impl == "te" or m.precision == "fp8"
    if te_wanted and importlib.util.find_spec("transformer_engine") is None:
        out.append(f"model.transformer_impl={m.transformer_impl} / model.precision={m.precision} "
                   "need Transformer Engine, which is not installed: pip install "
                   "'elama[gpu]' on a CUDA machine, or use model.transformer_impl=local with "
                   "model.precision=bf16 or fp32")
    if cfg.device == "cpu" and te_wanted:
        out.append("device=cpu runs the local layer spec only: set model.transformer_impl=local "
                   "and model.precision=fp32 or bf16")
    return out


def _check_sft(cfg: ElamaConfig, world_size: int) -> List[str]:
    """train.mode=sft, its data (data.sft) and LoRA (lora.*)."""
    t, sft, lora, out = cfg.train, cfg.data.sft, cfg.lora, []
    out += _choice(t.mode, TRAIN_MODES, "train.mode")
    out += _choice(sft.unit, SFT_UNITS, "data.sft.unit")
    if (t.mode == "sft") != (cfg.data.source == "sft"):
        out.append(f"train.mode={t.mode} with data.source={cfg.data.source}: instruction tuning "
                   "reads instruction data; set both train.mode=sft and data.source=sft "
                   "(data=sft_<preset>), or neither")
    if cfg.data.source == "sft" and not sft.prefix:
        out.append("data.source=sft needs data.sft.prefix (a dataset from tools/preprocess_data.py "
                   "--format chat)")
    for i, entry in enumerate(sft.mixture):
        if not (entry.value > 0 and math.isfinite(entry.value)) or not entry.area:
            out.append(f"data.sft.mixture[{i}] needs an area and a positive value, got "
                       f"area={entry.area!r} value={entry.value}")
    if sft.packing and cfg.data.source == "sft" and cfg.model.transformer_impl == "te" \
            and t.micro_batch_size != 1:
        out.append("packed sequences on Transformer Engine (THD) take one sequence per "
                   f"microbatch: set train.micro_batch_size=1 (got {t.micro_batch_size})")
    if lora.rank < 0:
        out.append(f"lora.rank={lora.rank} must be >= 0 (0: full fine-tuning)")
    if lora.rank > 0:
        out += _lora_problems(cfg)
    return out


def _lora_problems(cfg: ElamaConfig) -> List[str]:
    lora, out = cfg.lora, []
    if not lora.alpha > 0:
        out.append(f"lora.alpha={lora.alpha} must be > 0")
    if not 0 <= lora.dropout < 1:
        out.append(f"lora.dropout={lora.dropout} must be within [0, 1)")
    unknown = sorted(set(lora.targets) - set(LORA_TARGETS))
    if unknown or not lora.targets:
        out.append(f"lora.targets={list(lora.targets)}: choose among {list(LORA_TARGETS)}")
    if cfg.model.transformer_impl != "local":
        out.append("lora.rank>0 wraps the local spec's parallel linears; Transformer Engine fuses "
                   "the norm into linear_qkv/linear_fc1: set model.transformer_impl=local")
    if cfg.parallel.sequence_parallel:
        out.append("lora.rank>0 with parallel.sequence_parallel=true is not supported (the "
                   "adapter would see sequence-sharded inputs): set parallel.sequence_parallel=false")
    return out
