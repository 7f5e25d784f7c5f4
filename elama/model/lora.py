"""LoRA adapters on megatron-core's tensor-parallel linears (linear_qkv, linear_proj, linear_fc1,
linear_fc2): y = W x + (alpha / r) B A dropout(x), sharded like the layer they wrap, the base
frozen, adapters saved in the distributed checkpoint under `<linear>.adapter.*`.

Column-parallel W (output sharded): A is replicated, B sharded on its rows like W; the gradient
reaching A's output is all-reduced over tp (each rank sees only its B rows). SwiGLU's fc1 holds
[gate_r; up_r] on rank r, so its B is two row-sharded halves. Row-parallel W (input sharded): A
is sharded on its columns like W, its partial output all-reduced before the replicated B.
"""
from __future__ import annotations

import math
import types

import torch
from megatron.core import tensor_parallel
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.mappings import (copy_to_tensor_model_parallel_region,
                                                    reduce_from_tensor_model_parallel_region)
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint
from megatron.core.utils import unwrap_model

TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
ADAPTER = "adapter"


class LoraAdapter(torch.nn.Module):
    """The low-rank update of one parallel linear. `b_parts` names B's row blocks (fc1: gate,
    up); the weights keep their HF-side meaning whatever the tp degree."""

    def __init__(self, *, column: bool, in_local: int, out_local: int, rank: int, alpha: float,
                 dropout: float, b_parts: tuple[str, ...], dtype: torch.dtype, tp: int):
        super().__init__()
        self.column, self.scaling, self.b_parts = column, alpha / rank, b_parts
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        self.a = torch.nn.Parameter(torch.empty(rank, in_local, dtype=dtype))
        # PEFT's default: A Kaiming-uniform, B zero, so training starts from the base model.
        bound = 1.0 / math.sqrt(in_local * (1 if column else tp))
        torch.nn.init.uniform_(self.a, -bound, bound)
        if not column:
            tensor_parallel.set_tensor_model_parallel_attributes(self.a, True, 1, 1)
        rows = out_local // len(b_parts)
        for part in b_parts:
            b = torch.nn.Parameter(torch.zeros(rows, rank, dtype=dtype))
            if column:
                tensor_parallel.set_tensor_model_parallel_attributes(b, True, 0, 1)
            setattr(self, _b_name(part), b)

    def b_weights(self) -> list[torch.Tensor]:
        return [getattr(self, _b_name(p)) for p in self.b_parts]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.column or not self.training or isinstance(self.dropout, torch.nn.Identity):
            x = self.dropout(x)  # a replicated input: the same mask on every tp rank
        else:  # this rank's input columns: its own mask, from megatron's per-tp-rank stream
            with tensor_parallel.get_cuda_rng_tracker().fork():
                x = self.dropout(x)
        h = torch.nn.functional.linear(x, self.a)
        if self.column:  # every rank's B rows send gradient into the one replicated A
            h = copy_to_tensor_model_parallel_region(h)
        else:  # partial sums over this rank's input columns
            h = reduce_from_tensor_model_parallel_region(h)
        return torch.cat([torch.nn.functional.linear(h, b) for b in self.b_weights()], -1) \
            * self.scaling


def _b_name(part: str) -> str:
    return "b" if part == "" else f"b_{part}"


def _add_adapter(module, args, output):
    """Forward hook: (W x, bias) -> (W x + BAx, bias); megatron's linears return a pair."""
    out, bias = output
    return out + getattr(module, ADAPTER)(args[0]), bias


def _sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
    """The wrapped layer's checkpoint entries plus the adapter's, each sharded on its tp axis."""
    state = self.state_dict(prefix="", keep_vars=True)
    return make_sharded_tensors_for_checkpoint(
        state, prefix, self._lora_axes, sharded_offsets, tp_group=self.tp_group,
        dp_cp_group=(metadata or {}).get("dp_cp_group"))


def apply_lora(chunks: list, lora, *, tp: int, gated_fc1: bool = True) -> int:
    """Freeze every parameter of the (unwrapped, not yet DDP-wrapped) chunks and add trainable
    adapters on the target linears; returns the number of adapters."""
    count = 0
    for chunk in chunks:
        model = unwrap_model(chunk)
        for param in model.parameters():
            param.requires_grad_(False)
        for name, module in list(model.named_modules()):
            target = name.rsplit(".", 1)[-1]
            if target not in lora.targets:
                continue
            if not isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
                raise TypeError(f"{name} is {type(module).__name__}: LoRA wraps megatron-core's "
                                "local Column/RowParallelLinear (model.transformer_impl=local)")
            _wrap(module, target, lora, tp, gated_fc1 and target == "linear_fc1")
            count += 1
    return count


def _wrap(module, target: str, lora, tp: int, gated: bool) -> None:
    column = isinstance(module, ColumnParallelLinear)
    out_local, in_local = module.weight.shape
    parts = ("gate", "up") if gated else ("",)
    adapter = LoraAdapter(column=column, in_local=in_local, out_local=out_local, rank=lora.rank,
                          alpha=lora.alpha, dropout=lora.dropout, b_parts=parts,
                          dtype=module.weight.dtype, tp=tp)
    module.add_module(ADAPTER, adapter)
    axes = {"weight": 0, "bias": 0} if column else {"weight": 1}
    if column:
        axes.update({f"{ADAPTER}.{_b_name(p)}": 0 for p in parts})
    else:
        axes[f"{ADAPTER}.a"] = 1
    module._lora_axes = axes
    module.sharded_state_dict = types.MethodType(_sharded_state_dict, module)
    module.register_forward_hook(_add_adapter)


def is_adapter_key(key: str) -> bool:
    return f".{ADAPTER}." in key


def trainable_parameters(chunks: list) -> int:
    return sum(p.numel() for c in chunks for p in unwrap_model(c).parameters() if p.requires_grad)


def load_base_weights(chunks: list, directory) -> None:
    """Collective: load a checkpoint without adapters (imported or pretrained) into LoRA chunks:
    every base tensor strictly, the adapters left as initialised."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    from elama.checkpoint import CheckpointError, model_sharded_state_dict

    if not (directory / "metadata.json").exists():
        raise CheckpointError(f"{directory}: no model weights here")
    request = {name: {k: v for k, v in part.items() if not is_adapter_key(k)}
               for name, part in model_sharded_state_dict(chunks).items()}
    state = dist_checkpointing.load(request, str(directory), strict=StrictHandling.RAISE_ALL)
    for i, chunk in enumerate(chunks):
        result = unwrap_model(chunk).load_state_dict(state[f"model{i}"], strict=False)
        wrong = [k for k in result.missing_keys if not is_adapter_key(k)] + result.unexpected_keys
        if wrong:
            raise CheckpointError(f"{directory}: tensors missing or unexpected: {wrong[:5]}")
