"""ParallelDims: the frozen, validated parallel layout of a run (tp, pp, vpp, cp, dp, world size).

User input is checked by elama.config.validate with override names; the checks here guard the
object's own invariants, with the numbers in every message, like torchtitan's ParallelDims.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelDims:
    tp: int
    pp: int
    vpp: int
    cp: int
    dp: int
    world_size: int
    sequence_parallel: bool = False

    def __post_init__(self):
        for name in ("tp", "pp", "vpp", "cp", "dp", "world_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ParallelDims.{name}={getattr(self, name)} must be >= 1")
        product = self.tp * self.pp * self.cp * self.dp
        if product != self.world_size:
            raise ValueError(f"tp*pp*cp*dp = {self.tp}*{self.pp}*{self.cp}*{self.dp} = {product} "
                             f"!= world_size={self.world_size}")
        if self.sequence_parallel and self.tp == 1:
            raise ValueError("sequence_parallel needs tp > 1, got tp=1")
        if self.vpp > 1 and self.pp == 1:
            raise ValueError(f"vpp={self.vpp} needs pp > 1, got pp=1")

    @classmethod
    def from_config(cls, parallel, world_size: int) -> "ParallelDims":
        """Build from a validated elama.config.ParallelConfig; dp=-1 takes the rest of the world."""
        model_parallel = parallel.tp * parallel.pp * parallel.cp
        dp = parallel.dp if parallel.dp != -1 else world_size // model_parallel
        return cls(tp=parallel.tp, pp=parallel.pp, vpp=parallel.vpp, cp=parallel.cp, dp=dp,
                   world_size=world_size, sequence_parallel=parallel.sequence_parallel)

    @property
    def model_parallel_size(self) -> int:
        return self.tp * self.pp * self.cp

    @property
    def interleaved(self) -> bool:
        return self.vpp > 1

    def num_microbatches(self, global_batch_size: int, micro_batch_size: int) -> int:
        per_microbatch = micro_batch_size * self.dp
        if global_batch_size % per_microbatch:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                             f"micro_batch_size*dp={micro_batch_size}*{self.dp}={per_microbatch}")
        return global_batch_size // per_microbatch

    def layers_per_chunk(self, num_layers: int) -> int:
        chunks = self.pp * self.vpp
        if num_layers % chunks:
            raise ValueError(f"num_layers={num_layers} is not divisible by pp*vpp="
                             f"{self.pp}*{self.vpp}={chunks}")
        return num_layers // chunks

    def stage_of_layer(self, layer: int, num_layers: int) -> int:
        """Pipeline rank holding global layer `layer` (0-based): megatron's interleaved order puts
        chunk k = v * pp + p on pipeline rank p as its virtual stage v."""
        return (layer // self.layers_per_chunk(num_layers)) % self.pp

    def describe(self) -> str:
        sp = " sp" if self.sequence_parallel else ""
        return (f"tp={self.tp} pp={self.pp} vpp={self.vpp} cp={self.cp} dp={self.dp}{sp} "
                f"(world_size={self.world_size})")
