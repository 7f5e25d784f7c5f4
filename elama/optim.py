"""The optimizer (megatron-core's AdamW, distributed or not) and the LR schedule as a pure function.

The schedule is ours, not megatron's OptimizerParamScheduler: the learning rate is a pure function
of the step, so a resumed run recomputes it and a test pins it down (e-Llama: linear warmup, cosine
decay to a floor).
"""
from __future__ import annotations

import math

import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.utils import to_local_if_dtensor

from elama.config import ElamaConfig, OptimConfig
from elama.model.llama import DTYPES


def lr_at(step: int, o: OptimConfig, train_steps: int) -> float:
    """Learning rate of the update that follows `step` completed updates (0 for the first).

    Warmup is linear and reaches the peak on its last step ((step+1)/warmup, so the first update
    is not wasted at lr=0 as in megatron's scheduler); decay_steps counts from the end of warmup.
    """
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    decay_steps = o.decay_steps if o.decay_steps is not None else train_steps - o.warmup_steps
    decay_steps = max(decay_steps, 1)
    since = step - o.warmup_steps
    if o.schedule == "constant":
        return o.lr
    if o.schedule == "wsd":
        decay_start = decay_steps - o.wsd_decay_steps
        if since < decay_start:
            return o.lr
        progress = min((since - decay_start) / max(o.wsd_decay_steps, 1), 1.0)
        return o.min_lr + (o.lr - o.min_lr) * (1.0 - progress)
    progress = min(since / decay_steps, 1.0)
    if o.schedule == "linear":
        return o.min_lr + (o.lr - o.min_lr) * (1.0 - progress)
    return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_config(cfg: ElamaConfig) -> OptimizerConfig:
    """The one translation of our config into megatron-core's OptimizerConfig."""
    o, precision = cfg.optim, cfg.model.precision
    return OptimizerConfig(
        optimizer="adam",  # decoupled weight decay: AdamW
        lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=precision != "fp32", params_dtype=DTYPES[precision],
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
        overlap_param_gather=cfg.parallel.overlap_param_gather,
    )


def build_optimizer(cfg: ElamaConfig, model_chunks: list):
    """megatron's optimizer over the DDP-wrapped chunks: fp32 master weights and Adam state
    (sharded over data-parallel ranks with the distributed optimizer); norms get no weight decay."""
    optimizer = get_megatron_optimizer(optimizer_config(cfg), model_chunks)
    maybe_fuse_adam(optimizer, cfg.optim.fused_adam)
    apply_lr(optimizer, lr_at(0, cfg.optim, cfg.train.train_steps), cfg.optim.weight_decay)
    return optimizer


def apply_lr(optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_mult", 1.0)


@torch.no_grad()
def optimizer_step(optimizer, clip_grad: float) -> tuple[bool, float]:
    """Clip and step, unless the global gradient norm is not finite.

    megatron's own step() clips with a NaN norm as if it were fine and writes NaN into the weights;
    checking the norm first lets the trainer skip the update (or stop) with the step named.
    Returns (stepped, grad_norm); the norm is reduced across all model-parallel ranks.
    """
    if optimizer.prepare_grads():  # fp16 loss-scale overflow
        return False, float("nan")
    grad_norm = float(optimizer.get_grad_norm())
    if not math.isfinite(grad_norm):
        return False, grad_norm
    if clip_grad > 0:
        clip_grads_in_place(
            optimizer.get_parameters(), max_norm=clip_grad, total_norm=grad_norm,
            use_decoupled_grad=optimizer.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    return bool(optimizer.step_with_ready_grads()), grad_norm


def clip_grads_in_place(params, *, max_norm: float, total_norm: float,
                        use_decoupled_grad: bool) -> None:
    """megatron's clip_grad_by_total_norm_fp32 (the same coefficient, max_norm / (norm + 1e-6),
    the same products) as one in-place multi-tensor multiply: megatron's fallback without apex or
    TE scales out of place (copy_(g * c): +27 ms per step on the body-heavy bench model)."""
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [to_local_if_dtensor(getattr(p, attr)).detach() for p in params
             if getattr(p, attr, None) is not None]
    coeff = max_norm / (total_norm + 1.0e-6)
    if coeff < 1.0 and grads:
        torch._foreach_mul_(grads, coeff)


def maybe_fuse_adam(optimizer, enabled: bool) -> int:
    """Switch torch's AdamW (megatron's fallback without TE or apex) to torch's fused kernel
    where torch has one for the parameters' device; returns the param groups switched. TE's and
    apex's FusedAdam are fused already and left alone."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    if not enabled:
        return 0
    devices, switched = set(_get_fused_kernels_supported_devices()), 0
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Adam):  # torch's AdamW subclasses Adam
            continue
        for group in inner.param_groups:
            if all(p.device.type in devices and p.is_floating_point() for p in group["params"]):
                group.update(fused=True, foreach=False)
                switched += 1
    return switched
