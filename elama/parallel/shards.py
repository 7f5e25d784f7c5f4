"""Full (unsharded) tensors <-> this rank's tensor/pipeline shards of the model chunks.

Names are those of a tp=1, pp=1 GPTModel ("decoder.layers.<global index>...."). Used to load one
layout-independent initialisation into any layout, and to gather full parameters to compare runs.
The gate/up concatenation of SwiGLU's linear_fc1 is split per tp rank as [gate_r; up_r], so its
shards are not contiguous slices of the full tensor: handled here, as megatron's swiglu factory does.
"""
from __future__ import annotations

import re
from typing import Iterator

import torch
import torch.distributed as dist
from megatron.core.utils import unwrap_model

from elama.parallel import setup

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def _is_glu_fc1(name: str) -> bool:
    return name.endswith("mlp.linear_fc1.weight")


def named_local_params(chunks: list) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(global name, parameter) of every parameter this rank holds, in a fixed order.

    A tied output layer on the last stage is a copy of the embedding and is left out."""
    for chunk in chunks:
        model = unwrap_model(chunk)
        tied = getattr(model, "share_embeddings_and_output_weights", False)
        for name, param in model.named_parameters():
            if tied and name == "output_layer.weight":
                continue
            m = _LAYER.match(name)
            if m:
                layer = model.decoder.layers[int(m.group(1))]
                name = f"decoder.layers.{layer.layer_number - 1}." + name[m.end():]
            yield name, param


def _tp_dim(param) -> int | None:
    return param.partition_dim if getattr(param, "tensor_model_parallel", False) else None


def shard_of(name: str, full: torch.Tensor, param, tp_rank: int, tp: int) -> torch.Tensor:
    """The slice of `full` that tensor-parallel rank `tp_rank` holds for this parameter."""
    dim = _tp_dim(param)
    if dim is None or tp == 1:
        return full
    if _is_glu_fc1(name):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[tp_rank], up.chunk(tp, dim=0)[tp_rank]], dim=0)
    return full.chunk(tp, dim=dim)[tp_rank]


def _unshard(name: str, shards: list[torch.Tensor], param) -> torch.Tensor:
    dim = _tp_dim(param)
    if dim is None or len(shards) == 1:
        return shards[0]
    if _is_glu_fc1(name):
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(shards, dim=dim)


@torch.no_grad()
def apply_full_state_dict(chunks: list, full: dict[str, torch.Tensor]) -> int:
    """Copy this rank's shards out of full tensors into the chunks' parameters (in place, so DDP
    buffers stay valid). Strict: a missing name or a shape mismatch raises. Returns the count.
    Call before building the optimizer, which copies parameters into its fp32 master weights."""
    tp, rank = dist.get_world_size(setup.tp_group()), setup.tp_rank()
    copied = 0
    for name, param in named_local_params(chunks):
        if name not in full:
            raise KeyError(f"{name} (shape {tuple(param.shape)}) is not in the state dict")
        local = shard_of(name, full[name], param, rank, tp)
        if local.shape != param.shape:
            raise ValueError(f"{name}: full shape {tuple(full[name].shape)} gives a tp={tp} shard "
                             f"of {tuple(local.shape)}, but the parameter is {tuple(param.shape)}")
        param.copy_(local)
        copied += 1
    return copied


@torch.no_grad()
def gather_full_state_dict(chunks: list) -> dict[str, torch.Tensor]:
    """Every full parameter, in float32 on CPU, on every rank: all-gather over the tp group, then
    exchange between pipeline stages. Data-parallel replicas are identical and not consulted."""
    tp_group = setup.tp_group()
    tp = dist.get_world_size(tp_group)
    mine = {}
    for name, param in named_local_params(chunks):
        local = param.detach().float().contiguous()
        shards = [torch.empty_like(local) for _ in range(tp)]
        dist.all_gather(shards, local, group=tp_group)
        mine[name] = _unshard(name, shards, param).cpu()
    stages = [None] * dist.get_world_size(setup.pp_group())
    dist.all_gather_object(stages, mine, group=setup.pp_group())
    full = {}
    for stage in stages:
        full.update(stage)
    return full
