"""Hugging Face Llama 3.1 directory -> elama weights checkpoint, loadable by `init_from` (and any
tool) at any tp/pp: <out>/iter_0000000/{model/, meta.json} + the tracker.

Streamed: the name table plans one write per megatron tensor (its global key, shape and offset,
checked against megatron's own sharded state dict of the model built on the meta device), and
each tensor is read from the HF shards once, transformed and written only when the checkpoint
writer asks for it (elama.convert.dist_writer): memory holds one tensor, whatever the model size.
`plan_import` shows the same plan without weights (the 70B preset's in seconds).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from elama import checkpoint
from elama.config import ElamaConfig, ModelConfig
from elama.convert.dist_writer import ChunkWrite, sharded_object_bytes, write_dist_checkpoint
from elama.convert.hf import HFCheckpointReader, check_output_dir, staged_output_dir, tokenizer_hashes
from elama.convert.mapping import (PRECISION_OF_DTYPE, ConversionError, TensorEntry,
                                   build_name_table, hf_tensor_shapes,
                                   is_ignored_hf_tensor, model_config_from_hf)
from elama.parallel.dims import ParallelDims

logger = logging.getLogger(__name__)
SINGLE = ParallelDims(tp=1, pp=1, vpp=1, cp=1, dp=1, world_size=1)  # an import's one process


@dataclass(frozen=True)
class ImportResult:
    out_dir: Path
    model: ModelConfig
    tensors_read: int
    """HF tensors read (each exactly once)."""
    tensors_ignored: int
    """HF tensors that are not weights (rotary_emb.inv_freq buffers), named in the log."""
    params_written: int
    """megatron parameters filled and saved."""
    bytes_read: int
    seconds: float


def check_hf_tensors(reader: HFCheckpointReader, m: ModelConfig) -> tuple[torch.dtype, list[str]]:
    """Every name, shape and dtype checked against the name table before any tensor moves.
    Returns the weights' dtype and the HF tensors to ignore; raises ConversionError otherwise."""
    where = str(reader.path)
    expected = hf_tensor_shapes(build_name_table(m))
    problems, ignored, dtypes = [], [], set()
    for name in reader.names():
        meta = reader.meta(name)
        if name in expected:
            dtypes.add(meta.dtype)
            if meta.shape != expected[name]:
                problems.append(f"{name} ({meta.shard}) has shape {list(meta.shape)}, config.json "
                                f"implies {list(expected[name])}")
        elif is_ignored_hf_tensor(name):
            ignored.append(name)
        elif name == "lm_head.weight" and m.tie_embeddings:
            problems.append("lm_head.weight is present but tie_word_embeddings=true: set "
                            "tie_word_embeddings=false in config.json if the two differ")
        else:
            problems.append(f"{name} ({meta.shard}) is not a Llama weight this converter knows")
    missing = [n for n in expected if n not in reader]
    if missing:
        problems.append(f"{len(missing)} weight(s) missing, e.g. {missing[:3]}")
    if len(dtypes) > 1:
        problems.append(f"weights mix dtypes {sorted(map(str, dtypes))}; expected one")
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    if not problems and dtype not in PRECISION_OF_DTYPE and dtype != torch.float16:
        problems.append(f"weights are {dtype}; expected bfloat16, float32 or float16")
    if problems:
        raise ConversionError(where, problems)
    return dtype, ignored


def plan_writes(m: ModelConfig, dtype: torch.dtype, make=None) -> list[ChunkWrite]:
    """One chunk per name-table entry: layer tensors are rows of a (num_layers, ...) global
    tensor, as megatron stacks them. make(entry, sizes) gives the function producing its data."""
    writes = []
    for e in build_name_table(m):
        if e.layer is None:
            global_shape, offsets, sizes = e.shape, (0,) * len(e.shape), e.shape
        else:
            global_shape = (m.num_layers, *e.shape)
            offsets, sizes = (e.layer,) + (0,) * len(e.shape), (1, *e.shape)
        writes.append(ChunkWrite(e.ckpt_key, global_shape, offsets, sizes, dtype,
                                 make(e, sizes) if make else _no_data))
    return writes


def _no_data(out):
    raise ConversionError("import plan", ["a dry-run plan has no data to write"])


def check_against_megatron(m: ModelConfig, writes: list[ChunkWrite]) -> dict[str, bytes]:
    """Build the model on the meta device (no memory) and check that the plan covers exactly
    its sharded tensors, with their global shapes. Returns its sharded objects (the linear layers'
    extra state), serialised as megatron's torch_dist stores them. Needs megatron's groups at
    tp=pp=1 (`own_world` makes them)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

    from elama.model.llama import transformer_config
    from elama.parallel.wrap import build_model_chunks

    tc = transformer_config(m, SINGLE, device="cpu")
    tc.perform_initialization = False  # nothing to initialise on meta; shapes are the same
    with torch.device("meta"):
        chunks = build_model_chunks(ElamaConfig(model=m), tc, SINGLE)
    state = checkpoint.model_sharded_state_dict(chunks)["model0"]
    planned = {w.key: w.global_shape for w in writes}
    problems, keys, objects = [], set(), {}
    for value in nested_values(state):
        if isinstance(value, ShardedObject):
            objects[value.unique_key] = sharded_object_bytes(value)
            continue
        keys.add(value.key)
        if isinstance(value, ShardedTensor) and tuple(value.global_shape) != planned.get(value.key,
                                                                                        value.global_shape):
            problems.append(f"{value.key}: megatron's global shape {list(value.global_shape)}, "
                            f"planned {list(planned[value.key])}")
    problems += [f"megatron tensor {k} has no planned write" for k in sorted(keys - planned.keys())]
    problems += [f"planned {k} is not a megatron tensor" for k in sorted(planned.keys() - keys)]
    if problems:
        raise ConversionError("name table vs megatron-core", problems)
    return objects


def _maker(reader: HFCheckpointReader, m: ModelConfig, dtype: torch.dtype, progress: tqdm,
           counts: dict):
    """make(entry, sizes) for plan_writes: fill(out) reads the entry's HF row runs straight into
    their megatron rows of out (no intermediate tensors), casting through one staging tensor
    only when the dtype changes."""
    def make(entry: TensorEntry, sizes: tuple[int, ...]):
        def fill(out: torch.Tensor) -> None:
            target = out.view(entry.shape)  # without the stacked layer axis
            source = reader.meta(entry.hf[0]).dtype
            stage = target if source == dtype else torch.empty(entry.shape, dtype=source)
            for p in entry.transform.pieces(entry.shape[0], m):
                reader.read_rows_into(entry.hf[p.part], p.src, stage[p.dst:p.dst + p.rows])
            if stage is not target:
                target.copy_(stage)
            nbytes = sum(reader.meta(name).nbytes for name in entry.hf)
            counts["params"] += 1
            counts["bytes"] += nbytes
            progress.set_postfix_str(entry.group, refresh=False)
            progress.update(nbytes)
        return fill
    return make


def own_world():
    """megatron's groups for a world of one on torch's fake backend: the import only builds the
    model on the meta device and writes without collectives, and a fake world is torn down at
    once (gloo's took 0.12-0.17 s of a 2 s import)."""
    from elama.parallel.fake import fake_rank

    return fake_rank(SINGLE, 0)


def plan_import(m: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> str:
    """The plan of writes of an import of model m, checked against megatron's model on the meta
    device, as text: what `tools/convert_checkpoint.py import --plan` prints."""
    writes = plan_writes(m, dtype)
    with own_world():
        objects = check_against_megatron(m, writes)
    by_key: dict[str, list[ChunkWrite]] = {}
    for w in writes:
        by_key.setdefault(w.key, []).append(w)
    largest = max(writes, key=lambda w: w.nbytes)
    total = sum(w.nbytes for w in writes)
    lines = [f"import plan for {m.name} ({dtype}): {len(writes)} tensor writes into "
             f"{len(by_key)} keys, {total / 1e9:.2f} GB, plus {len(objects)} extra-state objects; "
             "checked against megatron-core's model on the meta device"]
    lines += [f"  {key}: global {list(ws[0].global_shape)}, {len(ws)} write(s) of "
              f"{list(ws[0].sizes)} ({ws[0].nbytes / 1e6:.1f} MB each)" for key, ws in by_key.items()]
    lines.append(f"largest write: {largest.key} at {list(largest.offsets)}, "
                 f"{largest.nbytes / 1e9:.2f} GB: memory holds one tensor (plus its HF parts)")
    return "\n".join(lines)


def _import_dtype(source: torch.dtype, requested: torch.dtype | None) -> torch.dtype:
    # float16 has no elama precision; float32 holds it exactly.
    dtype = requested or (torch.float32 if source == torch.float16 else source)
    if dtype not in PRECISION_OF_DTYPE:
        raise ConversionError("import", [f"dtype {dtype} is not one of {list(PRECISION_OF_DTYPE)}"])
    return dtype


def import_hf(src: str | Path, out: str | Path, *, dtype: torch.dtype | None = None,
              name: str | None = None, force: bool = False, progress: bool = True) -> ImportResult:
    """Convert the HF Llama directory src into the elama weights checkpoint out.

    dtype: weights dtype of the checkpoint (default: the source's; float16 becomes float32).
    Runs in one process; creates (and tears down) a world of one when no process group exists
    (`own_world`).
    The output appears under its final name only when complete.
    """
    import torch.distributed as dist

    start = time.perf_counter()
    src = Path(src)
    with HFCheckpointReader(src) as reader:
        m = model_config_from_hf(reader.config, name=name or src.name, where=str(src / "config.json"))
        source_dtype, ignored = check_hf_tensors(reader, m)
        dtype = _import_dtype(source_dtype, dtype)
        m = dataclasses.replace(m, precision=PRECISION_OF_DTYPE[dtype], transformer_impl="local")
        check_output_dir(out, force=force)
        if dist.is_initialized() and dist.get_world_size() > 1:
            raise ConversionError(str(src), ["import runs in one process; start it without torchrun"])
        for n in ignored:
            logger.info("ignoring %s: a recomputed buffer, not a weight", n)
        world = own_world() if not dist.is_initialized() else contextlib.nullcontext()
        counts = {"params": 0, "bytes": 0}
        bar = tqdm(total=sum(reader.meta(n).nbytes for n in reader.names() if n not in ignored),
                   unit="B", unit_scale=True, desc="import", disable=not progress)
        with world:
            writes = plan_writes(m, dtype, _maker(reader, m, dtype, bar, counts))
            objects = check_against_megatron(m, writes)
            with staged_output_dir(out, force=force) as tmp, bar:
                _save(writes, objects, tmp, m, src, reader.config)
        result = ImportResult(Path(out), m, len(reader) - len(ignored), len(ignored),
                              counts["params"], counts["bytes"], time.perf_counter() - start)
    logger.info("imported %s -> %s: %d HF tensors (%d ignored), %d parameters, %.2f GB in %.1f s",
                src, out, result.tensors_read, result.tensors_ignored, result.params_written,
                result.bytes_read / 1e9,
                result.seconds)
    return result


def _save(writes: list, objects: dict, out: Path, m: ModelConfig, src: Path,
          hf_config: dict) -> None:
    iter_dir = out / checkpoint.iter_name(0)
    write_dist_checkpoint(iter_dir / "model", writes, objects)
    checkpoint.write_meta(iter_dir, {
        "kind": "weights", "step": 0, "model": dataclasses.asdict(m),
        "source": {"format": "huggingface", "path": str(src.resolve()), "config": hf_config},
        "tokenizer": {"hf_files_sha256": tokenizer_hashes(src), "vocab_size": m.vocab_size,
                      "bos_token_id": hf_config.get("bos_token_id"),
                      "eos_token_id": hf_config.get("eos_token_id")},
    })
    checkpoint.write_tracker(out, 0)
