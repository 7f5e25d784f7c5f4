"""--recommend: search tp, pp, vpp, micro batch and recompute for a model, GPU count, global batch
and sequence length; rank the layouts that fit by estimated step time."""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from elama.config import ConfigError, validate
from elama.planner.gpus import GIB, Gpu

MICRO_BATCHES = (1, 2, 4)
RECOMPUTE = ("none", "selective", "full")
MAX_VPP = 8


@dataclass(frozen=True)
class Candidate:
    cfg: object
    dims: object
    peak_gib: float
    step: object

    @property
    def overrides(self) -> str:
        p, m, t = self.cfg.parallel, self.cfg.model, self.cfg.train
        return (f"parallel.tp={p.tp} parallel.pp={p.pp} parallel.vpp={p.vpp} "
                f"parallel.sequence_parallel={str(p.sequence_parallel).lower()} "
                f"train.micro_batch_size={t.micro_batch_size} model.recompute={m.recompute}")


def _divisors(n: int, limit: int) -> list:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def candidate_configs(cfg, world_size: int, gpu: Gpu):
    """Every valid variation of the layout knobs of cfg (other fields kept)."""
    layers = cfg.model.num_layers
    tps = [t for t in (1, 2, 4, 8) if t <= gpu.gpus_per_node]
    for tp, pp, mbs, recompute in itertools.product(tps, _divisors(layers, 16), MICRO_BATCHES,
                                                    RECOMPUTE):
        if world_size % (tp * pp * cfg.parallel.cp):
            continue
        for vpp in ([1] + _divisors(layers // pp, MAX_VPP)[1:] if pp > 1 else [1]):
            c = dataclasses.replace(cfg)
            c.parallel = dataclasses.replace(cfg.parallel, tp=tp, pp=pp, vpp=vpp, dp=-1,
                                             sequence_parallel=tp > 1)
            c.model = dataclasses.replace(cfg.model, recompute=recompute,
                                          recompute_method="uniform", recompute_num_layers=1)
            c.train = dataclasses.replace(cfg.train, micro_batch_size=mbs)
            try:
                validate(c, world_size, planning=True)
            except ConfigError:
                continue
            yield c


def recommend(cfg, world_size: int, gpu: Gpu, efficiency: float, top: int = 5) -> list:
    """The `top` fastest layouts that fit `gpu`, fastest first."""
    from elama.parallel.dims import ParallelDims
    from elama.planner.cost import estimate_step
    from elama.planner.layout import param_shapes
    from elama.planner.memory import stage_memory

    shapes = param_shapes(cfg.model)
    found, valid = [], 0
    for c in candidate_configs(cfg, world_size, gpu):
        valid += 1
        dims = ParallelDims.from_config(c.parallel, world_size)
        per_stage = shapes.per_stage(dims, c.model.num_layers)
        stages = stage_memory(c, dims, per_stage, gpu)
        if not all(s.fits for s in stages):
            continue
        peak = max(s.total_bytes for s in stages) / GIB
        found.append(Candidate(c, dims, peak, estimate_step(c, dims, per_stage, gpu, efficiency)))
    if not valid:  # what is wrong lies outside the searched knobs: say it like a plan would
        validate(cfg, world_size, planning=True)
        raise ConfigError([f"no tp/pp/vpp/micro batch of {cfg.model.name} is valid for "
                           f"world_size={world_size} and train.global_batch_size="
                           f"{cfg.train.global_batch_size}"])
    found.sort(key=lambda cand: (cand.step.total_s, cand.peak_gib))
    return found[:top]


def format_recommendations(found: list, world_size: int, gpu: Gpu) -> str:
    if not found:
        return f"no layout of this model fits {world_size} x {gpu.name}"
    steps = found[0].cfg.train.train_steps
    lines = [f"fastest layouts that fit {world_size} x {gpu.name} (of tp, pp, vpp, micro batch, "
             "recompute):"]
    for i, c in enumerate(found, 1):
        st = c.step
        lines.append(f"  {i}. {c.dims.describe()}, micro batch {c.cfg.train.micro_batch_size}, "
                     f"recompute {c.cfg.model.recompute}: {c.peak_gib:.1f} GiB, "
                     f"{st.tokens_per_s_per_gpu:,.0f} tokens/s/GPU, MFU {st.mfu_pct:.1f}%, "
                     f"{st.run(steps)['gpu_hours']:,.0f} GPU-hours\n     {c.overrides}")
    return "\n".join(lines)


def recommendations_json(found: list) -> list:
    out = []
    for c in found:
        st = c.step
        out.append({"overrides": c.overrides, "tp": c.dims.tp, "pp": c.dims.pp, "vpp": c.dims.vpp,
                    "dp": c.dims.dp, "micro_batch_size": c.cfg.train.micro_batch_size,
                    "recompute": c.cfg.model.recompute, "fits": True,
                    "memory_gib_per_gpu": c.peak_gib,
                    "est_tokens_per_s_per_gpu": st.tokens_per_s_per_gpu, "mfu_pct": st.mfu_pct,
                    "est_gpu_hours": st.run(c.cfg.train.train_steps)["gpu_hours"]})
    return out
