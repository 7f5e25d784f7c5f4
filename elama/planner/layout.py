"""What a layout puts on each rank: parameters per pipeline stage from megatron-core's real modules,
and the Plan of one config (counts, memory per stage, step time) that the report prints."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from elama.config import ElamaConfig, validate
from elama.planner.gpus import Gpu


@dataclass(frozen=True)
class ParamShapes:
    """Parameters of the pieces megatron places on stages, tensor-parallel parts at full size."""
    layer_sharded: int
    layer_replicated: int
    embedding: int
    output: int
    final_norm: int

    def per_stage(self, dims, num_layers: int) -> tuple:
        """Parameters one tensor-parallel rank of each pipeline stage holds (megatron's placement:
        interleaved chunks, embedding on the first stage, final norm and output on the last)."""
        per_layer = self.layer_sharded // dims.tp + self.layer_replicated
        stages = [0] * dims.pp
        for layer in range(num_layers):
            stages[dims.stage_of_layer(layer, num_layers)] += per_layer
        stages[0] += self.embedding // dims.tp
        stages[-1] += self.output // dims.tp + self.final_norm
        return tuple(stages)


_SHAPES: dict = {}


def _param_shapes(m) -> ParamShapes:
    from elama.model.llama import count_parameters
    from elama.parallel import setup
    from elama.parallel.dims import ParallelDims

    # Three layers on three stages separate a middle layer from the first stage's embedding and
    # the last stage's norm + output; tp=2 separates what megatron shards from what it replicates.
    three = dataclasses.replace(m, num_layers=3)
    setup.init_single_process()
    try:
        one, two = (count_parameters(three, ParallelDims(tp=tp, pp=3, vpp=1, cp=1, dp=1,
                                                         world_size=3 * tp)).per_stage
                    for tp in (1, 2))
    finally:
        setup.destroy_distributed()
    sharded = 2 * (one[1] - two[1])
    last_extra_sharded = 2 * ((one[2] - one[1]) - (two[2] - two[1]))
    return ParamShapes(layer_sharded=sharded, layer_replicated=one[1] - sharded,
                       embedding=one[0] - one[1], output=last_extra_sharded,
                       final_norm=one[2] - one[1] - last_extra_sharded)


def param_shapes(m) -> ParamShapes:
    """ParamShapes of a model, from two meta-device builds of megatron's modules (cached)."""
    key = dataclasses.astuple(dataclasses.replace(m, num_layers=3))
    if key not in _SHAPES:
        _SHAPES[key] = _param_shapes(m)
    return _SHAPES[key]


def rank_position(dims, rank: int) -> dict:
    """Where megatron's default order (tp fastest, then cp, dp, pp) puts a global rank."""
    return {"tp": rank % dims.tp, "cp": rank // dims.tp % dims.cp,
            "dp": rank // (dims.tp * dims.cp) % dims.dp,
            "pp": rank // (dims.tp * dims.cp * dims.dp)}


def stage_layers(dims, num_layers: int, stage: int) -> tuple:
    """0-based global layers of each model chunk of a pipeline stage, as the plan places them."""
    per_chunk = dims.layers_per_chunk(num_layers)
    mine = [layer for layer in range(num_layers) if dims.stage_of_layer(layer, num_layers) == stage]
    return tuple(tuple(mine[i:i + per_chunk]) for i in range(0, len(mine), per_chunk))


@dataclass(frozen=True)
class Plan:
    cfg: ElamaConfig
    world_size: int
    dims: object
    counts: object
    gpu: Gpu
    tokens_per_step: int
    microbatches: int
    flops_per_step: float
    stages: tuple
    """StageMemory of the most loaded rank of each pipeline stage."""
    step: object
    """StepTime of one optimizer step."""

    @property
    def peak(self):
        return max(self.stages, key=lambda s: s.total_bytes)

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.stages)


def build_plan(cfg: ElamaConfig, world_size: int, gpu: Gpu) -> Plan:
    """Validate (planning mode), count exactly, and estimate memory and step time; raises
    ConfigError for a wrong layout and ValueError for a precision the GPU lacks."""
    validate(cfg, world_size, planning=True)
    from elama.model.llama import count_parameters, flops_per_token
    from elama.parallel import setup
    from elama.parallel.dims import ParallelDims
    from elama.planner.calibration import calibrated_efficiency
    from elama.planner.cost import estimate_step
    from elama.planner.memory import stage_memory

    gpu.peak(cfg.model.precision)
    dims = ParallelDims.from_config(cfg.parallel, world_size)
    setup.init_single_process()
    try:
        counts = count_parameters(cfg.model, dims)
    finally:
        setup.destroy_distributed()
    t, seq = cfg.train, cfg.data.seq_len_tokens
    tokens = t.global_batch_size * seq
    return Plan(cfg=cfg, world_size=world_size, dims=dims, counts=counts, gpu=gpu,
                tokens_per_step=tokens,
                microbatches=dims.num_microbatches(t.global_batch_size, t.micro_batch_size),
                flops_per_step=flops_per_token(cfg.model, seq) * tokens,
                stages=stage_memory(cfg, dims, counts.per_stage, gpu),
                step=estimate_step(cfg, dims, counts.per_stage, gpu, calibrated_efficiency()))
