"""What `python -m elama.plan` prints: the layout, exact parameter counts, memory per stage with
the fit verdict, step time and cost; and the one-line JSON contract other tools read."""
from __future__ import annotations

import json

from elama.planner.gpus import GIB


def _memory_lines(plan) -> list:
    lines = []
    for s in plan.stages:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in s.gib().items() if v >= 0.005)
        lines.append(f"  stage {s.stage} ({s.in_flight} chunk-microbatches in flight): {parts}; "
                     f"total {s.total_bytes / GIB:.1f} GiB")
    return lines


def verdict(plan) -> str:
    peak, cap = plan.peak, plan.gpu.memory_gib
    used = peak.total_bytes / GIB
    if plan.fits:
        return (f"fit: FITS {plan.gpu.name} ({cap:.1f} GiB): most loaded rank (stage "
                f"{peak.stage}) {used:.1f} GiB, headroom {cap - used:.1f} GiB")
    return (f"fit: DOES NOT FIT {plan.gpu.name} ({cap:.1f} GiB): most loaded rank (stage "
            f"{peak.stage}) {used:.1f} GiB, over by {used - cap:.1f} GiB")


def format_plan(plan, efficiency: float) -> str:
    cfg, c, d, st = plan.cfg, plan.counts, plan.dims, plan.step
    run = st.run(cfg.train.train_steps)
    parts = ("compute", "recompute", "tp_comm", "pp_p2p", "bubble", "dp_exposed", "optimizer")
    lines = [
        f"layout: {d.describe()}",
        f"model: {cfg.model.name}, {c.total:,} parameters ({c.embedding:,} embedding), "
        f"precision {cfg.model.precision}, recompute {cfg.model.recompute}",
        "parameters per rank by pipeline stage: "
        + ", ".join(f"stage {i}: {n:,}" for i, n in enumerate(c.per_stage)),
        f"parameters per rank (max): {c.max_per_rank:,}",
        f"batch: {cfg.train.global_batch_size} sequences x {cfg.data.seq_len_tokens} tokens = "
        f"{plan.tokens_per_step:,} tokens per step; micro batch {cfg.train.micro_batch_size}, "
        f"{plan.microbatches} microbatches per step per data-parallel rank",
        f"tokens for {cfg.train.train_steps:,} steps: {plan.tokens_per_step * cfg.train.train_steps:,}",
        f"training FLOPs per step: {plan.flops_per_step:.3e}",
        "memory per GPU, most loaded rank of each pipeline stage (GiB):",
        *_memory_lines(plan),
        verdict(plan),
        f"step time: {st.total_s:.2f} s (" + ", ".join(
            f"{p} {getattr(st, p + '_s'):.3f}" for p in parts) + ")",
        f"throughput: {st.tokens_per_s_per_gpu:,.0f} tokens/s/GPU, {st.model_tflops_per_gpu:.0f} "
        f"model TFLOP/s/GPU, MFU {st.mfu_pct:.1f}% (compute efficiency {efficiency:.3f}, "
        "calibrated to published runs: elama/planner/calibration.py)",
        f"run: {cfg.train.train_steps:,} steps on {plan.world_size} x {plan.gpu.name}: "
        f"{run['days']:.1f} days, {run['gpu_hours']:,.0f} GPU-hours",
    ]
    return "\n".join(lines)


def plan_json(plan) -> str:
    """The JSON contract (one line): keys fits, memory_gib_per_gpu, memory_gib,
    est_tokens_per_s_per_gpu, mfu_pct, est_gpu_hours are relied on by other tools."""
    st, peak = plan.step, plan.peak
    run = st.run(plan.cfg.train.train_steps)
    return json.dumps({
        "fits": plan.fits, "gpu": plan.gpu.name, "gpu_memory_gib": plan.gpu.memory_gib,
        "memory_gib_per_gpu": peak.total_bytes / GIB, "memory_gib": peak.gib(),
        "peak_stage": peak.stage,
        "memory_gib_per_stage": [s.total_bytes / GIB for s in plan.stages],
        "layout": {"tp": plan.dims.tp, "pp": plan.dims.pp, "vpp": plan.dims.vpp,
                   "cp": plan.dims.cp, "dp": plan.dims.dp,
                   "sequence_parallel": plan.dims.sequence_parallel},
        "world_size": plan.world_size, "parameters": plan.counts.total,
        "parameters_per_stage": list(plan.counts.per_stage),
        "step_time_s": st.total_s, "est_tokens_per_s_per_gpu": st.tokens_per_s_per_gpu,
        "model_tflops_per_gpu": st.model_tflops_per_gpu, "mfu_pct": st.mfu_pct,
        "est_days": run["days"], "est_gpu_hours": run["gpu_hours"],
        "train_steps": plan.cfg.train.train_steps,
    })
