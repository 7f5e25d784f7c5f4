"""The schema of a run's configuration: typed dataclasses, one docstring per field."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional

PRECISIONS = ("fp32", "bf16", "fp8")
FP8_FORMATS = ("e4m3", "hybrid")
FP8_RECIPES = ("delayed", "tensorwise", "mxfp8", "blockwise")
RECOMPUTE = ("none", "selective", "full")
SCHEDULES = ("cosine", "wsd", "linear", "constant")
NONFINITE_POLICIES = ("skip", "stop")
DATA_SOURCES = ("blend", "synthetic", "sft")
TRAIN_MODES = ("pretrain", "sft")
SFT_UNITS = ("samples", "epochs")
LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
CORE_ATTENTION = ("sdpa", "megatron")


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
    core_attention: str = "sdpa"
    """Core attention of the local spec: 'sdpa' (torch's scaled_dot_product_attention: causal,
    GQA, block masks for packed SFT) or 'megatron' (megatron-core's unfused DotProductAttention).
    Transformer Engine (transformer_impl=te) uses its own."""
    swiglu_fusion: bool = False
    """On CPU, megatron's fused SwiGLU (torch.compile: ~3 s per process with a warm compile
    cache, minutes cold); GPU runs always fuse it."""

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
    mode: str = "pretrain"
    """'pretrain' (every token in the loss) or 'sft' (instruction tuning on data.source=sft:
    loss on answer tokens only, normalised per answer token over the global batch; validation
    loss per task; usually from checkpoint.init_from = an imported or pretrained checkpoint)."""


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
    fused_adam: bool = True
    """torch's fused AdamW kernel where megatron falls back to torch's AdamW (no TE or apex,
    e.g. CPU): one kernel per step instead of per-tensor loops; same update up to rounding."""


@dataclass
class BlendEntry:
    prefix: str = ""
    """Path prefix of a tokenized dataset (<prefix>.bin/.idx/.manifest.json)."""
    weight: float = 1.0
    """Relative sampling weight (normalised over the blend)."""


@dataclass
class NamedBlend:
    name: str = ""
    """Label of the held-out set in metrics (valid_<name>_loss)."""
    blend: List[BlendEntry] = field(default_factory=list)
    """Its prefixes and weights."""


@dataclass
class SftTask:
    area: str = ""
    """Capability area (the record's area field), e.g. concepts, extraction, multilingual."""
    task: str = "*"
    """Task within the area; '*' means each task of the area, shared by their example counts."""
    value: float = 1.0
    """With data.sft.unit=samples a relative weight; with unit=epochs the passes over the
    task's examples (fractions take a seeded subset)."""


@dataclass
class SftDataConfig:
    prefix: Optional[str] = None
    """Training split tokenized by `tools/preprocess_data.py --format chat`."""
    valid_prefix: Optional[str] = None
    """Held-out split (same format): validation loss per task when train.eval_interval > 0."""
    packing: bool = True
    """Pack several examples per sequence (no attention across them); false pads one example
    per sequence."""
    unit: str = "epochs"
    """How mixture values count: 'samples' (relative weights of the drawn examples) or 'epochs'
    (passes over each task's examples)."""
    mixture: List[SftTask] = field(default_factory=list)
    """Per area/task weights or epochs; empty means every task of the dataset at value 1."""
    examples_per_pass: Optional[int] = None
    """With unit=samples: examples drawn per pass of the mixture; None means the dataset size."""


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
    valid_blends: List[NamedBlend] = field(default_factory=list)
    """Held-out blends for validation loss (e-Llama: e-commerce and general), each
    {name, blend: [{prefix, weight}, ...]}; checked only when train.eval_interval > 0."""
    cache_dir: Optional[str] = None
    """Where megatron-core caches blend/sample indices; None means <run_dir>/data_cache."""
    replan: bool = False
    """Allow a resumed run to use a blend different from the one in its checkpoint."""
    token_budget: Optional[int] = None
    """Training tokens the data is planned for (megatron's sample index is built for
    ceil(token_budget / seq_len_tokens) sequences); None plans for train.train_steps at the run's
    first start. A resumed run keeps its checkpoint's plan, so more train.train_steps within the
    budget read exactly the samples a longer run from scratch would; past it the run is refused."""
    sft: SftDataConfig = field(default_factory=SftDataConfig)
    """Instruction data for data.source=sft (train.mode=sft)."""


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
    optimizer_format: str = "dp_reshardable"
    """Distributed-optimizer state on disk: 'dp_reshardable' (megatron's default: every rank
    writes its own shard, no gather; resumes at the same tp/pp, any dp) or 'fully_reshardable'
    (gathered into model space over dp: resumes into any tp/pp/dp, ~dp x the bytes moved). To
    change tp/pp from a dp_reshardable run, resume once at its layout with this set to
    fully_reshardable and save (train.exit_interval), then change the layout."""
    async_save: bool = True
    """Write model and optimizer shards in a background process (megatron-core's async
    checkpoint queue): training blocks only for the copy; the tracker names the checkpoint only
    after every rank's background write finished."""


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    """Write tensorboard scalars under <run_dir>/tensorboard."""
    jsonl: bool = True
    """Append one JSON line of metrics per log step to <run_dir>/metrics.jsonl."""
    peak_tflops_per_device: Optional[float] = None
    """Peak dense TFLOP/s of one device for MFU; None looks GPUs up by name (H100: 989) and
    reports no MFU on CPU."""
    wandb_project: Optional[str] = None
    """Weights & Biases project to log metrics to (needs `pip install wandb`); None disables."""
    wandb_run_name: Optional[str] = None
    """W&B run name; None uses the run directory's name."""
    wandb_mode: str = "offline"
    """'offline' (written under <run_dir>/wandb, no network; upload later with `wandb sync`),
    'online' or 'disabled'."""


@dataclass
class LoraConfig:
    rank: int = 0
    """LoRA rank r; 0 trains every parameter (full fine-tuning)."""
    alpha: float = 16.0
    """Scale of the update: W + (alpha / r) B A."""
    dropout: float = 0.0
    """Dropout on the adapter's input."""
    targets: List[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """Linears that get adapters: linear_qkv, linear_proj, linear_fc1, linear_fc2."""


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
    lora: LoraConfig = field(default_factory=LoraConfig)
