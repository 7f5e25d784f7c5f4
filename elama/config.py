"""The typed configuration of a run: dataclass schema, Hydra composition of conf/, validation.

Hydra composes conf/ (its compose API, never @hydra.main), OmegaConf checks types against these
dataclasses, and `OmegaConf.to_object` runs once in `load_config`; nothing below sees a DictConfig.
`validate` only checks: it collects every problem and raises one ConfigError naming the overrides.
This module imports nothing from elama.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional

PRECISIONS = ("fp32", "bf16", "fp8")
FP8_FORMATS = ("e4m3", "hybrid")
FP8_RECIPES = ("delayed", "tensorwise", "mxfp8", "blockwise")
RECOMPUTE = ("none", "selective", "full")
SCHEDULES = ("cosine", "wsd", "linear", "constant")
NONFINITE_POLICIES = ("skip", "stop")
DATA_SOURCES = ("blend", "synthetic")


class ConfigError(ValueError):
    """Every problem found in a config, one per line, each naming the override that fixes it."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("invalid config:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class ModelConfig:
    name: str = "tiny"
    """Preset name, for logs and checkpoints (conf/model/<name>.yaml)."""
    num_layers: int = 4
    """Transformer layers."""
    hidden_size: int = 64
    """Model width d_model."""
    ffn_hidden_size: int = 128
    """SwiGLU inner width (per branch)."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: int = 2
    """Key/value heads (GQA groups); Llama 3.1 uses 8."""
    kv_channels: Optional[int] = None
    """Head dimension; None means hidden_size / num_attention_heads."""
    vocab_size: int = 128256
    """Embedding rows: Llama 3's 128000 BPE tokens + 256 special tokens. Not padded, so HF export
    is exact; must divide by tp."""
    max_seq_len_tokens: int = 131072
    """Longest sequence the model supports (Llama 3.1: 128k with rope scaling)."""
    rotary_base: int = 500000
    """RoPE theta."""
    rope_scaling: bool = True
    """Llama 3.1's frequency-dependent RoPE scaling ("llama3" rope type)."""
    rope_scaling_factor: float = 8.0
    """Llama 3.1 scaling factor."""
    rope_low_freq_factor: float = 1.0
    """Llama 3.1 low_freq_factor (megatron-core 0.16.1 supports only 1)."""
    rope_high_freq_factor: float = 4.0
    """Llama 3.1 high_freq_factor (megatron-core 0.16.1 supports only 4)."""
    rope_original_max_position_embeddings: int = 8192
    """Llama 3.1 pre-scaling context (megatron-core 0.16.1 supports only 8192)."""
    norm_epsilon: float = 1e-5
    """RMSNorm epsilon."""
    tie_embeddings: bool = False
    """Share input embedding and output layer (Llama 3.1 8B/70B: untied)."""
    init_method_std: float = 0.02
    """Std of the normal initialisation (from-scratch runs and tests only)."""
    transformer_impl: str = "local"
    """'local' (megatron-core's own modules; CPU) or 'te' (Transformer Engine; GPU)."""
    precision: str = "bf16"
    """'fp32', 'bf16' (fp32 master weights) or 'fp8' (bf16 + TE FP8 GEMMs)."""
    fp8_format: str = "hybrid"
    """FP8 format: 'hybrid' (E4M3 forward, E5M2 backward) or 'e4m3'."""
    fp8_recipe: str = "delayed"
    """TE recipe: delayed | tensorwise | mxfp8 (Blackwell) | blockwise."""
    fp8_amax_history_len: int = 1024
    """Delayed scaling: amax history window."""
    fp8_amax_compute_algo: str = "max"
    """Delayed scaling: 'max' or 'most_recent' over the history."""
    fp8_margin: int = 0
    """Delayed scaling: scaling-factor margin (powers of 2)."""
    recompute: str = "none"
    """Activation recompute: none | selective (attention core) | full (whole layers)."""
    recompute_method: str = "uniform"
    """With recompute=full: 'uniform' or 'block'."""
    recompute_num_layers: int = 1
    """With recompute=full: layers per recompute unit (uniform) or recomputed per stage (block)."""
    attention_dropout: float = 0.0
    """Llama pretraining uses no dropout."""
    hidden_dropout: float = 0.0
    """Llama pretraining uses no dropout."""

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads


@dataclass
class ParallelConfig:
    tp: int = 1
    """Tensor parallel degree (within a node: <= 8 GPUs)."""
    pp: int = 1
    """Pipeline parallel stages."""
    vpp: int = 1
    """Virtual pipeline chunks per stage (interleaved 1F1B); 1 disables interleaving."""
    cp: int = 1
    """Context parallel degree (needs transformer_impl=te)."""
    dp: int = -1
    """Data parallel degree; -1 derives it as world_size / (tp * pp * cp)."""
    sequence_parallel: bool = False
    """Shard norm/dropout activations along the sequence across the tp group (needs tp > 1)."""
    distributed_optimizer: bool = False
    """Shard optimizer state and fp32 master weights across data-parallel ranks (ZeRO-1)."""
    overlap_grad_reduce: bool = False
    """Overlap the data-parallel gradient reduction with backward (GPU runs)."""
    overlap_param_gather: bool = False
    """With the distributed optimizer: overlap the parameter all-gather with forward."""
    timeout_s: int = 1800
    """Collective timeout."""


@dataclass
class TrainConfig:
    micro_batch_size: int = 2
    """Sequences per forward pass on one data-parallel rank."""
    global_batch_size: int = 8
    """Sequences per optimizer step across all data-parallel ranks."""
    train_steps: int = 20
    """Optimizer steps of the run."""
    nonfinite: str = "stop"
    """On NaN/inf loss or grad norm: 'skip' the step (counted) or 'stop' the run."""
    log_interval: int = 1
    """Steps between metrics lines."""
    eval_interval: int = 0
    """Steps between validation passes; 0 disables."""
    eval_steps: int = 2
    """Global batches per validation pass and blend."""
    exit_interval: int = 0
    """Save and exit (code 0) when the step is a multiple of this; 0 never. For time-boxed jobs
    and the demo's stop-and-resume."""


@dataclass
class OptimConfig:
    lr: float = 3e-4
    """Peak learning rate (e-Llama: 3e-5 for 8B, 1.5e-5 for 70B, 10% of Llama's own)."""
    min_lr: float = 3e-5
    """Floor of the decay."""
    schedule: str = "cosine"
    """cosine | wsd (warmup-stable-decay) | linear | constant, all after linear warmup."""
    warmup_steps: int = 2
    """Linear warmup from 0 to lr."""
    decay_steps: Optional[int] = None
    """Steps from the end of warmup to min_lr; None means train_steps - warmup_steps."""
    wsd_decay_steps: int = 0
    """With schedule=wsd: length of the final decay phase."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay (not applied to norms)."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables."""


@dataclass
class BlendEntry:
    prefix: str = ""
    """Path prefix of a tokenized dataset (<prefix>.bin/.idx/.manifest.json)."""
    weight: float = 1.0
    """Relative sampling weight (normalised over the blend)."""


@dataclass
class DataConfig:
    source: str = "blend"
    """'blend' (tokenized datasets below) or 'synthetic' (seeded random tokens, for smoke runs)."""
    seq_len_tokens: int = 64
    """Tokens per training sequence (e-Llama: 8192)."""
    tokenizer_path: Optional[str] = None
    """Llama 3 tokenizer.model; None uses the one shipped in the llama-models package."""
    train_blend: List[BlendEntry] = field(default_factory=list)
    """Weighted training sources (e-Llama: 50% e-commerce, 50% general replay)."""
    valid_blends: Dict[str, List[BlendEntry]] = field(default_factory=dict)
    """Named held-out blends, each a list of {prefix, weight}, for validation loss."""
    cache_dir: Optional[str] = None
    """Where megatron-core caches blend/sample indices; None means <run_dir>/data_cache."""
    replan: bool = False
    """Allow a resumed run to use a blend different from the one in its checkpoint."""


@dataclass
class CheckpointConfig:
    run_dir: str = "runs/default"
    """Run directory: checkpoints (iter_NNNNNNN/), tracker, metrics, tensorboard."""
    save_interval: int = 0
    """Steps between saves; 0 saves only at the end and on preemption."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted after a newer one is committed."""
    init_from: Optional[str] = None
    """Weights-only start (e.g. converted Llama 3.1): fresh optimizer, schedule and step 0.
    Ignored when run_dir already holds a checkpoint (resume wins)."""


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    """Write tensorboard scalars under <run_dir>/tensorboard."""
    jsonl: bool = True
    """Append one JSON line of metrics per log step to <run_dir>/metrics.jsonl."""
    peak_tflops_per_device: Optional[float] = None
    """Peak dense TFLOP/s of one device for MFU; None looks GPUs up by name (H100: 989) and
    reports no MFU on CPU."""


@dataclass
class ElamaConfig:
    device: str = "cpu"
    """'cpu' (gloo, local spec, the CPU device layer) or 'cuda' (NCCL)."""
    seed: int = 1234
    """Base seed; per-rank streams derive from it as megatron does."""
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def load_config(overrides: Iterable[str] = (), config_name: str = "config") -> ElamaConfig:
    """Compose conf/<config_name>.yaml with Hydra overrides into a typed ElamaConfig."""
    from hydra import compose, initialize_config_module
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    # conf/config.yaml starts its defaults with this schema, so YAML files and command-line
    # overrides are merged into typed nodes: unknown keys and wrong types fail at compose time.
    ConfigStore.instance().store(name="elama_schema", node=ElamaConfig)
    overrides = list(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("elama_conf", version_base="1.3"):
            composed = compose(config_name=config_name, overrides=overrides)
        return OmegaConf.to_object(composed)
    except OmegaConfBaseException as e:
        raise ConfigError([f"{e.__class__.__name__}: {e}".replace("\n", " ")]) from None
    except Exception as e:  # Hydra's own errors: unknown group option, bad override syntax
        if e.__class__.__module__.startswith("hydra"):
            raise ConfigError([f"{e}".replace("\n", " ")]) from None
        raise
    finally:
        GlobalHydra.instance().clear()


def to_dict(cfg: ElamaConfig) -> dict:
    """Plain nested dict of the config (for checkpoints and logs)."""
    return dataclasses.asdict(cfg)


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
    for check in (_check_model, _check_parallel, _check_batch, _check_optim, _check_data):
        problems += check(cfg, world_size)
    if not planning:
        problems += _check_run_inputs(cfg)
    for check in extra_checks:
        problems += check(cfg, world_size)
    if problems:
        raise ConfigError(problems)


def _choice(value, options, override: str) -> List[str]:
    return [] if value in options else [f"{override}={value!r} is not one of {list(options)}"]


def _check_model(cfg: ElamaConfig, world_size: int) -> List[str]:
    m, out = cfg.model, []
    for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                 "num_query_groups", "vocab_size", "max_seq_len_tokens"):
        if getattr(m, name) < 1:
            out.append(f"model.{name}={getattr(m, name)} must be >= 1")
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
    p, m, out = cfg.parallel, cfg.model, []
    for name in ("tp", "pp", "vpp", "cp"):
        if getattr(p, name) < 1:
            out.append(f"parallel.{name}={getattr(p, name)} must be >= 1")
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
    if p.cp > 1 and m.transformer_impl != "te":
        out.append(f"parallel.cp={p.cp} needs Transformer Engine attention: model.transformer_impl=te")
    if p.overlap_param_gather and not p.distributed_optimizer:
        out.append("parallel.overlap_param_gather=true needs parallel.distributed_optimizer=true")
    return out


def _check_batch(cfg: ElamaConfig, world_size: int) -> List[str]:
    t, p, out = cfg.train, cfg.parallel, []
    for name in ("micro_batch_size", "global_batch_size", "train_steps", "log_interval"):
        if getattr(t, name) < 1:
            out.append(f"train.{name}={getattr(t, name)} must be >= 1")
    for name in ("eval_interval", "eval_steps", "exit_interval"):
        if getattr(t, name) < 0:
            out.append(f"train.{name}={getattr(t, name)} must be >= 0")
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
    for name in ("weight_decay", "clip_grad", "adam_eps"):
        if getattr(o, name) < 0:
            out.append(f"optim.{name}={getattr(o, name)} must be >= 0")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(o, name) < 1:
            out.append(f"optim.{name}={getattr(o, name)} must be within [0, 1)")
    return out


def _check_data(cfg: ElamaConfig, world_size: int) -> List[str]:
    d, out = cfg.data, []
    out += _choice(d.source, DATA_SOURCES, "data.source")
    if d.seq_len_tokens < 1:
        out.append(f"data.seq_len_tokens={d.seq_len_tokens} must be >= 1")
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
