"""Step time of a layout on a GPU: compute at a calibrated efficiency, tensor-parallel collectives
over NVLink, pipeline p2p and bubble, the data-parallel gradient reduce-scatter / parameter
all-gather and how much of it overlaps, and the optimizer step; then tokens/s/GPU, MFU, days and
GPU-hours for the run. The efficiency comes from elama.planner.calibration."""
from __future__ import annotations

from dataclasses import dataclass

from elama.planner.gpus import Gpu

# Collectives per layer per microbatch that sit on the critical path, in units of one
# all-gather/reduce-scatter of the s*b*h activation. With sequence parallelism a layer runs 4 in
# forward and 6 in backward (the extra 2 re-gather the saved sharded inputs); without, 2 + 2
# all-reduces of 2 units each. Backward column-parallel collectives overlap the wgrad/dgrad GEMMs,
# so 6 of 10 (SP) or 4 of 8 stay exposed. Transformer Engine's userbuffer overlap (tp_comm_overlap,
# which the published Megatron-Bridge runs use and elama does not) hides all but ~1.
TP_EXPOSED_UNITS = {True: 6, False: 4}
TP_EXPOSED_UNITS_OVERLAPPED = 1
OPTIMIZER_BYTES_PER_PARAM = 32  # Adam: read/write fp32 master, both moments, grad, bf16 param
HBM_EFFICIENCY = 0.6


@dataclass(frozen=True)
class StepTime:
    compute_s: float
    """Model FLOPs of the slowest stage, all microbatches, at the calibrated efficiency."""
    recompute_s: float
    tp_comm_s: float
    pp_p2p_s: float
    bubble_s: float
    dp_exposed_s: float
    optimizer_s: float
    tokens_per_step: int
    world_size: int
    model_flops_per_step: float
    peak_tflops: float

    @property
    def total_s(self) -> float:
        return (self.compute_s + self.recompute_s + self.tp_comm_s + self.pp_p2p_s
                + self.bubble_s + self.dp_exposed_s + self.optimizer_s)

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_step / self.total_s / self.world_size

    @property
    def model_tflops_per_gpu(self) -> float:
        return self.model_flops_per_step / self.total_s / self.world_size / 1e12

    @property
    def mfu_pct(self) -> float:
        """Model FLOPs utilisation against the dense BF16 peak (TF32 for fp32 runs)."""
        return 100.0 * self.model_tflops_per_gpu / self.peak_tflops

    def run(self, steps: int) -> dict:
        seconds = self.total_s * steps
        return {"days": seconds / 86400, "gpu_hours": seconds * self.world_size / 3600}


def _stage_flops(m, dims, seq: int, mbs: int) -> tuple:
    """(GEMM FLOPs, attention FLOPs) of one microbatch on the busiest pipeline rank: its layers
    plus, on the last stage, the output layer (counted as in elama.model.llama.flops_per_token)."""
    from elama.model.llama import flops_per_token

    output = 6.0 * m.vocab_size * m.hidden_size
    attention = 3.0 * 2 * m.num_layers * seq * m.num_attention_heads * m.head_dim
    layers_gemm = flops_per_token(m, seq) - output - attention
    tokens = seq * mbs / (dims.tp * dims.cp)
    share = 1.0 / dims.pp
    last_gemm = layers_gemm * share + output
    return tokens * last_gemm, tokens * attention * share


def _compute_time(m, dims, gemm: float, attention: float, gpu: Gpu, efficiency: float) -> tuple:
    """(model compute, recompute) seconds. FP8 runs only the GEMMs on FP8 tensor cores
    (Transformer Engine keeps attention in BF16)."""
    gemm_peak = gpu.peak(m.precision) * 1e12 * efficiency
    other_peak = gpu.peak("fp32" if m.precision == "fp32" else "bf16") * 1e12 * efficiency
    compute = gemm / gemm_peak + attention / other_peak
    if m.recompute == "selective":  # core attention forward again
        return compute, attention / 3 / other_peak
    if m.recompute == "full":  # forward of the recomputed layers again
        layers = dims.layers_per_chunk(m.num_layers)
        share = 1.0 if m.recompute_method == "uniform" else min(m.recompute_num_layers, layers) / layers
        return compute, share * compute / 3
    return compute, 0.0


def _bandwidth(gpu: Gpu, span_ranks: int) -> float:
    """Bytes/s of a group whose ranks span `span_ranks` consecutive ranks."""
    return (gpu.nvlink_gb_s if span_ranks <= gpu.gpus_per_node else gpu.network_gb_s) * 1e9


def _tp_time(m, dims, seq: int, mbs: int, gpu: Gpu, overlapped: bool) -> float:
    if dims.tp == 1:
        return 0.0
    units = TP_EXPOSED_UNITS_OVERLAPPED if overlapped else TP_EXPOSED_UNITS[dims.sequence_parallel]
    unit_bytes = (dims.tp - 1) / dims.tp * 2 * seq * mbs * m.hidden_size
    layers = m.num_layers / dims.pp
    return layers * units * unit_bytes / _bandwidth(gpu, dims.tp)


def _p2p_time(m, dims, seq: int, mbs: int, gpu: Gpu) -> float:
    """Activation sends forward and gradient sends backward, once per chunk per microbatch."""
    if dims.pp == 1:
        return 0.0
    tensor = 2 * seq * mbs * m.hidden_size / (dims.tp if dims.sequence_parallel else 1)
    return 2 * dims.vpp * tensor / _bandwidth(gpu, dims.tp * dims.cp * dims.dp + 1)


def _dp_exposed(cfg, dims, params: int, compute_mb: float, gpu: Gpu) -> float:
    """Gradient reduce-scatter (fp32) and parameter all-gather (bf16) with the distributed
    optimizer, or an fp32 all-reduce without; megatron overlaps the first with the last
    microbatch's backward and the second with the first microbatch's forward."""
    if dims.dp == 1:
        return 0.0
    p = cfg.parallel
    bw = _bandwidth(gpu, dims.tp * dims.cp * dims.dp)
    ring = (dims.dp - 1) / dims.dp
    grads = (4 if p.distributed_optimizer else 8) * params * ring / bw
    gather = 2 * params * ring / bw if p.distributed_optimizer else 0.0
    backward, forward = 2 * compute_mb / 3, compute_mb / 3
    exposed = max(0.0, grads - backward) if p.overlap_grad_reduce else grads
    return exposed + (max(0.0, gather - forward) if p.overlap_param_gather else gather)


def estimate_step(cfg, dims, per_stage_params, gpu: Gpu, efficiency: float, *,
                  tp_comm_overlap: bool = False) -> StepTime:
    """StepTime of one optimizer step of this layout on `gpu` at `efficiency` (the fraction of
    peak the kernels reach; see calibration)."""
    from elama.model.llama import flops_per_token

    m, t = cfg.model, cfg.train
    seq, mbs = cfg.data.seq_len_tokens, cfg.train.micro_batch_size
    microbatches = dims.num_microbatches(t.global_batch_size, mbs)
    gemm, attention = _stage_flops(m, dims, seq, mbs)
    compute_mb, recompute_mb = _compute_time(m, dims, gemm, attention, gpu, efficiency)
    tp_mb = _tp_time(m, dims, seq // dims.cp, mbs, gpu, tp_comm_overlap)
    p2p_mb = _p2p_time(m, dims, seq // dims.cp, mbs, gpu)
    per_mb = compute_mb + recompute_mb + tp_mb + p2p_mb
    bubble = (dims.pp - 1) / dims.vpp * per_mb  # (pp - 1) / vpp microbatch slots of warmup/drain
    params = max(per_stage_params)
    owned = params / dims.dp if cfg.parallel.distributed_optimizer else params
    optimizer = OPTIMIZER_BYTES_PER_PARAM * owned / (gpu.hbm_tb_s * 1e12 * HBM_EFFICIENCY)
    tokens = t.global_batch_size * seq
    return StepTime(compute_s=microbatches * compute_mb, recompute_s=microbatches * recompute_mb,
                    tp_comm_s=microbatches * tp_mb, pp_p2p_s=microbatches * p2p_mb,
                    bubble_s=bubble, dp_exposed_s=_dp_exposed(cfg, dims, params, compute_mb, gpu),
                    optimizer_s=optimizer, tokens_per_step=tokens, world_size=dims.world_size,
                    model_flops_per_step=flops_per_token(m, seq) * tokens,
                    peak_tflops=gpu.peak("fp32" if m.precision == "fp32" else "bf16"))
