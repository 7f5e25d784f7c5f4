"""Scoring with megatron-core: a trainer or converted checkpoint loaded at any tp/pp (on CPU through
the CPU device layer), run forward-only on token ids, giving full-vocabulary float32 logits.
The path logits parity is tested on (tools/logits.py) and the one evaluation of elama checkpoints
reuses: elama.eval reaches megatron only through this module (padded logits, indexed documents).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from elama import checkpoint
from elama.config import ConfigError, ElamaConfig, ModelConfig, load_config, validate

logger = logging.getLogger(__name__)

# Model fields a scoring run may change; the architecture always comes from the checkpoint.
OVERRIDABLE_MODEL_FIELDS = ("precision", "transformer_impl")


class ScoringError(ValueError):
    """Bad scoring input (token file, checkpoint metadata); the message names the file."""


def model_config_from_meta(meta: dict, where: str | Path) -> ModelConfig:
    """The ModelConfig a checkpoint's meta.json records (trainer and converted checkpoints)."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    model = meta.get("model")
    if not isinstance(model, dict):
        raise ScoringError(f"{where}: meta.json has no 'model' object")
    unknown = sorted(set(model) - fields)
    if unknown:
        raise ScoringError(f"{where}: meta.json model fields {unknown} are unknown to this elama "
                           "(written by a newer version?)")
    return ModelConfig(**model)


def build_scoring_config(ckpt: str | Path, overrides: Sequence[str] = (), *,
                         world_size: int) -> tuple[ElamaConfig, Path]:
    """(validated config, iteration directory): the model from the checkpoint, the layout, device
    and precision from Hydra overrides (parallel.tp=2 parallel.pp=2 model.precision=fp32)."""
    overrides = list(overrides)
    banned = [o for o in overrides if o.split("=")[0].lstrip("+~") == "model"
              or (o.startswith("model.") and o[6:].split("=")[0] not in OVERRIDABLE_MODEL_FIELDS)]
    if banned:
        raise ConfigError([f"{o}: the architecture comes from the checkpoint; only "
                           f"model.{{{','.join(OVERRIDABLE_MODEL_FIELDS)}}} may be overridden"
                           for o in banned])
    iter_dir = checkpoint.resolve(ckpt)
    model = model_config_from_meta(checkpoint.read_meta(iter_dir), iter_dir / "meta.json")
    # data=synthetic: scoring reads no training data, and validate() wants a named source.
    cfg = load_config(["data=synthetic", *overrides])
    chosen = {o[6:].split("=")[0] for o in overrides if o.startswith("model.")}
    cfg.model = dataclasses.replace(model, **{k: getattr(cfg.model, k) for k in chosen})
    validate(cfg, world_size)
    return cfg, iter_dir


def build_empty_chunks(cfg: ElamaConfig, tc, dims, device: str = "cpu") -> list:
    """This rank's model chunks with uninitialised weights, to be loaded: built on the meta
    device, then allocated, so no time goes into a random initialisation that is overwritten.
    Process groups must be up. Every parameter must then be loaded (strict loads check)."""
    from elama.parallel.wrap import build_model_chunks

    if cfg.model.tie_embeddings and dims.pp > 1:
        # The last stage's copy of a tied embedding is synchronised by a collective while the
        # model is built (LanguageModule.setup_embeddings_and_output_layer): real tensors needed.
        return build_model_chunks(cfg, tc, dims)
    with torch.device("meta"):
        chunks = build_model_chunks(cfg, tc, dims)
    return [chunk.to_empty(device=device) for chunk in chunks]


def load_scoring_model(cfg: ElamaConfig, dims, iter_dir: str | Path) -> list:
    """Chunks of this rank in eval mode with the checkpoint's weights (any saved layout)."""
    from elama.model.llama import transformer_config

    tc = transformer_config(cfg.model, dims, device=cfg.device)
    chunks = build_empty_chunks(cfg, tc, dims, device=cfg.device)
    checkpoint.load_model(chunks, Path(iter_dir) / "model")
    for chunk in chunks:
        chunk.eval()
    return chunks


def _collect_logits(output: torch.Tensor, non_loss_data: bool = True) -> torch.Tensor:
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    # [batch, seq, vocab / tp] -> the full vocabulary on every tp rank of the last stage.
    return gather_from_tensor_model_parallel_region(output).float().cpu()


def _forward_step(data_iterator, model):
    tokens = next(data_iterator)
    return model(tokens, None, None), partial(_collect_logits)


@torch.no_grad()
def compute_logits(chunks: list, tokens: torch.Tensor, *, micro_batch_size: int = 1
                   ) -> torch.Tensor | None:
    """Full-vocabulary float32 logits [batch, seq, vocab] for int64 tokens [batch, seq], the same
    on every rank. Returned on the ranks of the last pipeline stage, None on the others."""
    from elama.parallel import setup

    batch, seq = tokens.shape
    if batch % micro_batch_size:
        raise ScoringError(f"batch of {batch} sequences is not divisible by "
                           f"micro_batch_size={micro_batch_size}")
    device = next(chunks[0].parameters()).device
    micro = list(tokens.to(device).split(micro_batch_size))
    # Every chunk reads its own iterator over the same microbatches (interleaved schedules).
    iterators = [iter(micro) for _ in chunks]
    outputs = setup.forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=iterators if len(chunks) > 1 else iterators[0],
        model=chunks, num_microbatches=len(micro), seq_length=seq,
        micro_batch_size=micro_batch_size, forward_only=True, collect_non_loss_data=True)
    if not setup.is_last_stage():
        return None
    return torch.cat(outputs, dim=0)


def is_output_rank() -> bool:
    """The one rank that writes results: last pipeline stage, tp rank 0, dp rank 0."""
    from elama.parallel import setup

    return setup.is_last_stage() and setup.tp_rank() == 0 and setup.dp_rank() == 0


def read_token_ids(path: str | Path, vocab_size: int) -> torch.Tensor:
    """Token ids [batch, seq] (int64) from .npy (1-D or 2-D integers), .json (a list of ids or a
    list of equal-length lists) or .txt (one sequence per line, ids separated by spaces)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            ids = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            ids = np.asarray(json.loads(path.read_text()))
        elif path.suffix == ".txt":
            ids = np.asarray([_txt_line(path, i, line) for i, line in
                              enumerate(path.read_text().splitlines(), start=1) if line.strip()])
        else:
            raise ScoringError(f"{path}: expected a .npy, .json or .txt file of token ids")
    except (OSError, ValueError) as e:
        if isinstance(e, ScoringError):
            raise
        raise ScoringError(f"{path}: unreadable token ids ({e})") from None
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ScoringError(f"{path}: expected integer ids of shape [seq] or [batch, seq] (rows of "
                           f"equal length), got shape {list(ids.shape)} of {ids.dtype}")
    bad = np.argwhere((ids < 0) | (ids >= vocab_size))
    if len(bad):
        row, col = bad[0]
        raise ScoringError(f"{path}: id {ids[row, col]} at sequence {row}, position {col} is "
                           f"outside the model's vocabulary [0, {vocab_size}) ({len(bad)} such ids)")
    return torch.from_numpy(ids.astype(np.int64))


def _txt_line(path: Path, lineno: int, line: str) -> list[int]:
    try:
        return [int(tok) for tok in line.split()]
    except ValueError:
        raise ScoringError(f"{path}:{lineno}: expected integers separated by spaces") from None


def read_indexed_documents(prefix: str | Path) -> list[np.ndarray]:
    """The documents (int64 token arrays) of a megatron indexed dataset <prefix>.bin/.idx, in
    order: what evaluation reads, so that eval uses megatron only through this module."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(prefix), mmap=True)
    return [np.asarray(ds[i], dtype=np.int64) for i in range(len(ds))]


def padded_logits(chunks: list, seqs: Sequence[Sequence[int]], *, pad_id: int = 0,
                  multiple_of: int = 8) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(logits as compute_logits gives them, the int64 tokens [batch, length]) for sequences of
    different lengths, right-padded to one length, a multiple of `multiple_of` (tensor/sequence
    parallel split the sequence). Causal attention keeps padding away from real positions, so
    logits[i, :len(seqs[i])] are those of the unpadded sequence. Every rank passes the same seqs."""
    length = -(-max(len(s) for s in seqs) // multiple_of) * multiple_of
    tokens = torch.full((len(seqs), length), pad_id, dtype=torch.int64)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.int64)
    return compute_logits(chunks, tokens), tokens


def open_scoring_model(ckpt: str | Path, overrides: Sequence[str] = ()):
    """(config, dims, chunks, started): a checkpoint loaded for scoring on this rank, process
    groups started from the launcher's environment unless already up (`started` says whether
    this call started them, for close_scoring)."""
    import os

    import torch.distributed as dist

    from elama.parallel import setup
    from elama.parallel.dims import ParallelDims

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg, iter_dir = build_scoring_config(ckpt, overrides, world_size=world)
    dims = ParallelDims.from_config(cfg.parallel, world)
    started = not dist.is_initialized()
    if started and world == 1 and "MASTER_ADDR" not in os.environ:
        setup.init_single_process(device=cfg.device, seed=cfg.seed)
    elif started:
        setup.init_distributed(dims, device=cfg.device, seed=cfg.seed)
    return cfg, dims, load_scoring_model(cfg, dims, iter_dir), started


def share_from_last_stage(obj, dims):
    """The last pipeline stage's `obj` on every rank of its pipeline (a no-op without pp)."""
    if dims.pp == 1:
        return obj
    import torch.distributed as dist

    from elama.parallel import setup

    box = [obj]
    dist.broadcast_object_list(box, src=setup.last_stage_rank(), group=setup.pp_group())
    return box[0]


def close_scoring(started: bool) -> None:
    if started:
        from elama.parallel import setup

        setup.destroy_distributed()
