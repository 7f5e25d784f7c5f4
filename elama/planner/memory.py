"""Memory per GPU, component by component, for the most loaded rank of each pipeline stage.

Activations follow Korthikanti et al. 2022 (arXiv:2205.05198, Table 2) re-derived for Llama with
flash attention. Against Megatron-LM's megatron/training/theoretical_memory_usage.py, where it
applies (sequence parallel + selective recompute, or no sequence parallelism), tensors agree
within 8% on 8B/70B layouts (tests/unit/test_memory_model.py); parameters agree exactly. We differ:
- SwiGLU: FC1 keeps its 2*ffn-wide output (gate and up) and the SwiGLU output, 6*s*b*ffn bytes
  per layer, where the formula's GeLU MLP keeps 4*s*b*ffn;
- GQA: K and V are num_query_groups/num_attention_heads of Q's size; the formula assumes MHA;
- dropout masks: Llama trains with dropout 0 and torch stores no mask at p=0; the formula keeps
  2 sbh per layer and sbh after the embedding (with them it is up to 18% above us: tp=8, no SP);
- logits: the loss keeps an fp32 copy (4 bytes per logit) and briefly the bf16 one (2), counted
  on the last stage for every pp; the formula counts 4 (SP) or 2 bytes, and only when pp = 1;
- runtime: CUDA context, NCCL buffers and allocator fragmentation are stated allowances below
  (the formula has a flat 5% without SP and nothing with SP).
"""
from __future__ import annotations

from dataclasses import dataclass

from elama.planner.gpus import GIB, Gpu

CUDA_CONTEXT_GIB = 0.75
"""CUDA context plus cuBLAS/cuDNN/Transformer Engine workspaces (measured 0.5-1 GiB on H100)."""
NCCL_GIB_PER_GROUP = 0.25
"""NCCL channel buffers per communicator that has more than one rank (tp, cp, pp, dp, embedding)."""
ALLOCATOR_FRACTION = 0.08
"""Caching-allocator fragmentation on what is allocated and freed every microbatch."""
ACT_BYTES = {"fp32": 4, "bf16": 2, "fp8": 2}  # fp8 counted at bf16: an upper bound


@dataclass(frozen=True)
class StageMemory:
    stage: int
    components: dict
    """Bytes by component (weights, grads, optimizer, activations, ...)."""
    in_flight: int
    """(Chunk, microbatch) pairs whose activations are held at this stage's peak."""
    capacity_bytes: float

    @property
    def total_bytes(self) -> float:
        return sum(self.components.values())

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.capacity_bytes

    def gib(self) -> dict:
        return {k: v / GIB for k, v in self.components.items()}


def layer_activation_bytes(m, seq: int, mbs: int, tp: int, sp: bool, *, fused_attention: bool
                           ) -> float:
    """Bytes one decoder layer keeps for its backward, per microbatch, without full recompute."""
    sbh = seq * mbs * m.hidden_size
    a, g, d, f = m.num_attention_heads, m.num_query_groups, m.head_dim, m.ffn_hidden_size
    # Both RMSNorm inputs and outputs (the outputs are the QKV and FC1 inputs): 4 x 2 bytes.
    replicated = 8 * sbh
    # Q, K, V after RoPE (GQA), the attention output, FC1's gate+up output, the SwiGLU output.
    sharded = seq * mbs * (2 * a * d + 4 * g * d + 2 * a * d + 4 * f + 2 * f)
    if m.recompute == "none":
        if fused_attention:
            sharded += 4 * a * seq * mbs  # flash attention's fp32 log-sum-exp
        else:
            sharded += 2 * a * seq * seq * mbs  # unfused attention keeps the softmax output
    scale = ACT_BYTES[m.precision] / 2
    return scale * (replicated / (tp if sp else 1) + sharded / tp)


def chunk_activation_bytes(m, layers: int, layer_bytes: float, input_bytes: float) -> tuple:
    """(bytes one model chunk keeps per microbatch, transient bytes of one recompute) for the
    recompute mode; full recompute keeps only checkpointed layer inputs."""
    if m.recompute != "full":
        return layers * layer_bytes, 0.0
    n = min(m.recompute_num_layers, layers)
    if m.recompute_method == "uniform":  # groups of n layers, each keeps its input
        return -(-layers // n) * input_bytes, n * layer_bytes
    return n * input_bytes + (layers - n) * layer_bytes, layer_bytes  # block: first n of a chunk


def in_flight_chunks(dims, stage: int, microbatches: int) -> int:
    """(Chunk, microbatch) activations a pipeline stage holds at its peak under megatron's
    schedules: 1F1B warms up pp - stage - 1 microbatches; interleaving adds (vpp - 1) * pp chunk
    forwards and doubles the stage offset (schedules.py, get_pp_rank_microbatches)."""
    if dims.pp == 1:
        return 1
    if dims.vpp == 1:
        return min(dims.pp - stage, microbatches)
    warmup = (dims.pp - stage - 1) * 2 + (dims.vpp - 1) * dims.pp
    return min(warmup, microbatches * dims.vpp) + 1


def _nccl_groups(dims) -> int:
    sizes = (dims.tp, dims.cp, dims.pp, dims.dp)
    return sum(1 for n in sizes if n > 1) + (1 if dims.pp > 1 else 0)


def _state_bytes(cfg, dims, params: int) -> dict:
    """Weights, fp32 gradient buffer (megatron reduces and accumulates in fp32), optimizer state:
    fp32 master weights (unless training in fp32) and Adam's two moments, sharded over dp by the
    distributed optimizer."""
    precision = cfg.model.precision
    out = {"weights": params * (4 if precision == "fp32" else 2)}
    if precision == "fp8":
        out["fp8_weight_cache"] = params * 2  # TE's FP8 copy of each weight and its transpose
    out["grads"] = params * 4
    optimizer = params * (8 if precision == "fp32" else 12)
    out["optimizer"] = optimizer / dims.dp if cfg.parallel.distributed_optimizer else optimizer
    return out


def stage_memory(cfg, dims, per_stage_params, gpu: Gpu) -> tuple:
    """StageMemory of the most loaded rank of every pipeline stage (first: embedding and the most
    microbatches in flight; last: output layer and the fp32 logits of the loss)."""
    m, sp = cfg.model, dims.sequence_parallel
    seq, mbs = cfg.data.seq_len_tokens // dims.cp, cfg.train.micro_batch_size
    microbatches = dims.num_microbatches(cfg.train.global_batch_size, mbs)
    fused = m.transformer_impl == "te"
    layer = layer_activation_bytes(m, seq, mbs, dims.tp, sp, fused_attention=fused)
    input_bytes = ACT_BYTES[m.precision] * seq * mbs * m.hidden_size / (dims.tp if sp else 1)
    per_chunk, recompute_transient = chunk_activation_bytes(
        m, dims.layers_per_chunk(m.num_layers), layer, input_bytes)
    stages = []
    for p in range(dims.pp):
        chunks = in_flight_chunks(dims, p, microbatches)
        comp = _state_bytes(cfg, dims, per_stage_params[p])
        comp["activations"] = chunks * per_chunk + recompute_transient
        if p == 0:
            comp["input_ids"] = 8.0 * seq * mbs * chunks
        if p == dims.pp - 1:
            # fp32 softmax kept for backward (4 bytes) + the bf16 logits it came from (2 bytes),
            # vocab-sharded over tp, plus the final norm's output that feeds the output layer.
            comp["logits_loss"] = 6.0 * seq * mbs * m.vocab_size / dims.tp + input_bytes
        dynamic = comp["activations"] + comp.get("logits_loss", 0.0)
        comp["allocator"] = ALLOCATOR_FRACTION * dynamic
        comp["cuda_context"] = CUDA_CONTEXT_GIB * GIB
        comp["nccl"] = NCCL_GIB_PER_GROUP * GIB * _nccl_groups(dims)
        stages.append(StageMemory(stage=p, components=comp, in_flight=chunks,
                                  capacity_bytes=gpu.memory_gib * GIB))
    return tuple(stages)
