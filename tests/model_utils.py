"""Shared helpers for model tests: a layout-independent initialisation and a short training run."""
from __future__ import annotations

import hashlib

import torch

TINY_OVERRIDES = [
    "model=tiny", "model.vocab_size=512", "model.num_layers=4", "model.precision=fp32",
    "data=synthetic", "data.seq_len_tokens=32", "train.micro_batch_size=2",
    "train.global_batch_size=8", "optim.warmup_steps=1", "optim.lr=2e-4", "optim.min_lr=2e-5",
]


def full_shape(name: str, param, tp: int) -> tuple[int, ...]:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp
    return tuple(shape)


def reference_init(chunks: list, tp: int, seed: int = 0, std: float = 0.02) -> dict:
    """Full tensors for this rank's parameters, a pure function of (name, shape, seed): the same
    weights whatever the layout. Norm weights are near 1 rather than exactly 1 so that their
    gradients (and sequence-parallel reduction) matter."""
    from elama.parallel.shards import named_local_params

    full = {}
    for name, param in named_local_params(chunks):
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        shape = full_shape(name, param, tp)
        values = torch.randn(shape, generator=g)
        full[name] = 1.0 + 0.1 * values if param.dim() == 1 else std * values
    return full


def build_reference_run(overrides: list):
    """In a spawned rank: the tiny model at the config's layout with reference weights (the same
    full tensors whatever the layout) and its optimizer; the setup the layout-parity tests share."""
    import os

    from elama.config import load_config, validate
    from elama.optim import build_optimizer
    from elama.parallel import parallelize_llama, setup
    from elama.parallel.dims import ParallelDims
    from elama.parallel.shards import apply_full_state_dict

    world = int(os.environ["WORLD_SIZE"])
    cfg = load_config(TINY_OVERRIDES + overrides)
    validate(cfg, world)
    dims = ParallelDims.from_config(cfg.parallel, world)
    setup.init_distributed(dims, device="cpu", seed=cfg.seed)
    model, tc = parallelize_llama(cfg, dims)
    apply_full_state_dict(model, reference_init(model, dims.tp))
    optimizer = build_optimizer(cfg, model)
    tc.grad_scale_func = optimizer.scale_loss
    return cfg, dims, model, optimizer
