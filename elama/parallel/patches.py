"""Every patch of megatron-core internals outside the CPU device layer, in one place: each names the
megatron function it works around, the text that must still be in that function's source, and
when it is needed (device, optimizer backend, distributed optimizer, checkpoint format, version).

Today these are the distributed optimizer's load fixes for torch's Adam (the fallback when neither
Transformer Engine nor apex is installed). TE's and apex's FusedAdam keep `step` in the param
groups, which megatron restores itself: on a GPU with either, no patch is applied.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Callable

import torch

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "te", "apex")
VERIFIED_MEGATRON = ("0.16.",)
"""megatron-core versions whose source these patches were written against; on any other the
source check decides (a patch whose site text is gone raises instead of applying blindly)."""


class PatchError(RuntimeError):
    """A patch whose megatron-core site no longer contains what it works around."""


@dataclass(frozen=True)
class Patch:
    name: str
    path: str
    """File under megatron/core/."""
    function: str
    """Qualified name of the megatron-core function the patch works around."""
    source: str
    """Text that must still appear in that function."""
    when: Callable[[dict], bool]
    """Needed for this situation: {device, backend, distributed, optimizer_format, loading}."""
    why: str


def _torch_distributed(s: dict) -> bool:
    return s["backend"] == "torch" and s["distributed"]


PATCHES: tuple[Patch, ...] = (
    Patch("torch_adam_state_init", "optimizer/distrib_optimizer.py",
          "DistributedOptimizer.state_dict", "assert len(steps) == 1", _torch_distributed,
          "a fresh torch Adam has no per-parameter `step`; the loading template asserts one"),
    Patch("torch_adam_step_passthrough", "optimizer/distrib_optimizer.py",
          "DistributedOptimizer._set_main_param_and_optimizer_states",
          "dst_tensors[key].copy_(tensors[key])",
          _torch_distributed,
          "the copy loop must not touch torch Adam's `step` (restored from the param groups): "
          "the fully_reshardable loader leaves it out (KeyError: 'step'), the dp_reshardable one "
          "hands it the loading template's stale step (resets Adam's bias correction to step 0: "
          "measured, the second step after a resume differs)"),
    Patch("torch_adam_step_unshare", "optimizer/distrib_optimizer.py",
          "DistributedOptimizer.load_state_dict", 's["step"] = step', _torch_distributed,
          "load_state_dict gives every parameter one shared step tensor, which torch Adam "
          "increments once per parameter: a resumed run silently uses step * n_params"),
)


def optimizer_backend() -> str:
    """The Adam megatron-core builds here: 'te' (Transformer Engine FusedAdam), 'apex', 'torch'."""
    distrib = importlib.import_module("megatron.core.optimizer.distrib_optimizer")
    if getattr(distrib, "USING_TE_OPTIMIZER", False):
        return "te"
    if getattr(distrib, "USING_APEX_OPTIMIZER", False):
        return "apex"
    return "torch"


def megatron_version() -> str:
    import importlib.metadata as md

    return md.version("megatron-core")


def select_patches(*, device: str, backend: str, distributed: bool, optimizer_format: str,
                   loading: bool = True) -> list[Patch]:
    """The patches a run in this situation needs (the test of the choice per backend)."""
    if backend not in BACKENDS:
        raise ValueError(f"optimizer backend {backend!r} is not one of {BACKENDS}")
    situation = dict(device=device, backend=backend, distributed=distributed,
                     optimizer_format=optimizer_format, loading=loading)
    return [p for p in PATCHES if p.when(situation)]


def missing_sites(patches=PATCHES) -> list[str]:
    """Patches whose megatron-core function is gone or no longer contains their source text."""
    from elama.parallel.cpu import site_problem

    problems = ((p.name, site_problem(p.path, p.function, p.source)) for p in patches)
    return [f"{name}: {problem}" for name, problem in problems if problem]


def _chosen(optimizer, optimizer_format: str, device: str) -> list[Patch]:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    distributed = any(isinstance(o, DistributedOptimizer) for o in _chained(optimizer))
    patches = select_patches(device=device, backend=optimizer_backend(), distributed=distributed,
                             optimizer_format=optimizer_format)
    problems = missing_sites(patches)
    if problems:
        raise PatchError(f"megatron-core {megatron_version()} (patches verified on "
                         f"{VERIFIED_MEGATRON}) changed where elama patches it: "
                         + "; ".join(problems) + ". Check elama/parallel/patches.py.")
    return patches


def prepare_optimizer_load(optimizer, optimizer_format: str, device: str) -> list[str]:
    """Before building the loading template: the patches this run needs. Returns their names."""
    patches = _chosen(optimizer, optimizer_format, device)
    names = [p.name for p in patches]
    if "torch_adam_state_init" in names:
        _init_torch_adam_state(optimizer)
    if "torch_adam_step_passthrough" in names:
        _pass_step_through(optimizer)
    if names:
        logger.info("megatron load patches applied: %s", ", ".join(names))
    return names


def finish_optimizer_load(optimizer, applied: list[str]) -> None:
    """After megatron's load_state_dict."""
    if "torch_adam_step_unshare" in applied:
        for inner in _inner_optimizers(optimizer):
            for state in inner.state.values():
                if "step" in state and torch.is_tensor(state["step"]):
                    state["step"] = state["step"].detach().clone()


def _chained(optimizer) -> list:
    return getattr(optimizer, "chained_optimizers", [optimizer])


def _inner_optimizers(optimizer) -> list:
    return [o.optimizer for o in _chained(optimizer) if getattr(o, "optimizer", None) is not None]


def _init_torch_adam_state(optimizer) -> None:
    """Give every parameter Adam state (step, moments): the structure the loader expects."""
    for inner in _inner_optimizers(optimizer):
        for group in inner.param_groups:
            for p in group["params"]:
                state = inner.state[p]
                state.setdefault("step", torch.zeros((), dtype=torch.float32))
                state.setdefault("exp_avg", torch.zeros_like(p, memory_format=torch.preserve_format))
                state.setdefault("exp_avg_sq", torch.zeros_like(p, memory_format=torch.preserve_format))


def _pass_step_through(optimizer) -> None:
    """Hand the copy loop the parameter's current step, which load_state_dict has just restored
    from the param groups (a no-op copy)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in _chained(optimizer):
        if not isinstance(opt, DistributedOptimizer):
            continue
        original = opt._set_main_param_and_optimizer_states

        def set_states(model_param, tensors, _opt=opt, _original=original):
            group, order = _opt.model_param_group_index_map[model_param]
            state = _opt.optimizer.state[_opt.optimizer.param_groups[group]["params"][order]]
            if "step" in state:
                tensors = {**tensors, "step": state["step"]}
            return _original(model_param, tensors)

        opt._set_main_param_and_optimizer_states = set_states
