"""The optimizer (megatron-core's AdamW, distributed or not) and the LR schedule as a pure function.

The schedule is ours, not megatron's OptimizerParamScheduler: the learning rate is a pure function
of the step, so a resumed run recomputes it and a test pins it down (e-Llama: linear warmup, cosine
decay to a floor).
"""
from __future__ import annotations

import math

import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

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
        clip_grad_by_total_norm_fp32(
            optimizer.get_parameters(), max_norm=clip_grad, total_norm=grad_norm,
            use_decoupled_grad=optimizer.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    return bool(optimizer.step_with_ready_grads()), grad_norm


def _inner_optimizers(optimizer) -> list:
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    return [o.optimizer for o in chained if getattr(o, "optimizer", None) is not None]


def init_torch_adam_state(optimizer) -> None:
    """Give every parameter Adam state (step, moments) before a load.

    With torch's Adam (no apex/TE) a fresh optimizer has no state and megatron's loader needs the
    structure of one: DistributedOptimizer asserts exactly one `step` (distrib_optimizer.py:642),
    and its init_state_fn creates the moments but no step."""
    for inner in _inner_optimizers(optimizer):
        for group in inner.param_groups:
            for p in group["params"]:
                state = inner.state[p]
                state.setdefault("step", torch.zeros((), dtype=torch.float32))
                state.setdefault("exp_avg", torch.zeros_like(p, memory_format=torch.preserve_format))
                state.setdefault("exp_avg_sq", torch.zeros_like(p, memory_format=torch.preserve_format))


def apply_torch_adam_load_patch(optimizer) -> None:
    """Before megatron's load_state_dict: let the fully_reshardable loader skip `step`.

    With torch's Adam every parameter's state holds a `step`, which the fully_reshardable loader
    leaves out of the tensors it copies (the step is restored from the param groups), and
    `_set_main_param_and_optimizer_states` then fails with KeyError: 'step'
    (distrib_optimizer.py:940). The patch hands it the parameter's current step, a no-op copy."""
    from megatron.core.optimizer.distrib_optimizer import HAVE_APEX_OR_TE, DistributedOptimizer

    if HAVE_APEX_OR_TE:
        return
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(opt, DistributedOptimizer):
            continue
        original = opt._set_main_param_and_optimizer_states

        def set_states(model_param, tensors, _opt=opt, _original=original):
            if "step" not in tensors:
                group, order = _opt.model_param_group_index_map[model_param]
                state = _opt.optimizer.state[_opt.optimizer.param_groups[group]["params"][order]]
                if "step" in state:
                    tensors = {**tensors, "step": state["step"]}
            return _original(model_param, tensors)

        opt._set_main_param_and_optimizer_states = set_states


def apply_torch_adam_load_fixes(optimizer) -> None:
    """After megatron's load_state_dict: one `step` tensor per parameter.

    megatron restores a single shared step tensor for all parameters (distrib_optimizer.py:819);
    torch's Adam increments it in place once per parameter, so a resumed run would silently use
    step * n_params in its bias correction."""
    for inner in _inner_optimizers(optimizer):
        for state in inner.state.values():
            if "step" in state and torch.is_tensor(state["step"]):
                state["step"] = state["step"].detach().clone()
