"""Hugging Face Llama 3.1 directory -> elama weights checkpoint, loadable by `init_from` (and any
tool) at any tp/pp: <out>/iter_0000000/{model/, meta.json} + the tracker.

The megatron model is built once at tp=1/pp=1, uninitialised (the only copy of the weights in
memory), filled tensor by tensor from the HF shards through the name table, and saved with
megatron-core's dist_checkpointing, whose global keys and offsets any layout can load.
"""
from __future__ import annotations

import dataclasses
import contextlib
import logging
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from elama import checkpoint
from elama.config import ElamaConfig, ModelConfig
from elama.convert.hf import HFCheckpointReader, check_output_dir, staged_output_dir, tokenizer_hashes
from elama.convert.mapping import (PRECISION_OF_DTYPE, ConversionError, TensorEntry,
                                   build_name_table, hf_tensor_shapes,
                                   is_ignored_hf_tensor, model_config_from_hf)

logger = logging.getLogger(__name__)

READ_THREADS = 4


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


def _fill_entry(entry: TensorEntry, param: torch.Tensor, reader: HFCheckpointReader,
                m: ModelConfig) -> int:
    """Copy one megatron parameter from its HF tensors; returns the bytes read."""
    if entry.transform.name == "identity" and reader.meta(entry.hf[0]).dtype == param.dtype:
        reader.read_rows_into(entry.hf[0], 0, param.data)  # straight into the parameter
    else:
        parts = [reader.get(name) for name in entry.hf]
        param.data.copy_(entry.transform.to_megatron(parts, m))  # copy_ casts float16 -> float32
    return sum(reader.meta(name).nbytes for name in entry.hf)


@torch.no_grad()
def fill_from_hf(chunks: list, reader: HFCheckpointReader, m: ModelConfig, *,
                 progress: bool = True) -> tuple[int, int]:
    """Fill every parameter of tp=1/pp=1 chunks from the HF reader (strict both ways).
    Returns (parameters filled, bytes read)."""
    from elama.parallel.shards import named_local_params

    params = dict(named_local_params(chunks))
    table = build_name_table(m)
    unknown = sorted(set(params) - {e.megatron for e in table})
    if unknown:
        raise ConversionError("name table", [f"megatron parameters without an HF source: {unknown}"])
    bar = tqdm(total=sum(reader.meta(n).nbytes for e in table for n in e.hf), unit="B",
               unit_scale=True, desc="import", disable=not progress)
    filled, nbytes = 0, 0
    # Reads (pread) and copies release the GIL: threads share the copying and page faulting of a
    # fresh model (2 threads: 2x on 2 cores). Each thread holds at most one fused tensor's parts.
    with ThreadPoolExecutor(min(READ_THREADS, os.cpu_count() or 1)) as pool:
        done = pool.map(lambda e: _fill_entry(e, params[e.megatron], reader, m), table)
        for entry, entry_bytes in zip(table, done):
            bar.set_postfix_str(entry.group, refresh=False)
            bar.update(entry_bytes)
            filled, nbytes = filled + 1, nbytes + entry_bytes
    bar.close()
    return filled, nbytes


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
    Runs in one process; creates (and tears down) a world of one when no process group exists.
    The output appears under its final name only when complete.
    """
    import torch.distributed as dist

    from elama.parallel import setup

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
        own_world = not dist.is_initialized()
        if own_world:
            setup.init_single_process()
        try:
            chunks = _build_model(m)
            filled, nbytes = fill_from_hf(chunks, reader, m, progress=progress)
            with staged_output_dir(out, force=force) as tmp:
                _save(chunks, tmp, m, src, reader.config)
        finally:
            if own_world:
                setup.destroy_distributed()
        result = ImportResult(Path(out), m, len(reader) - len(ignored), len(ignored), filled,
                              nbytes, time.perf_counter() - start)
    logger.info("imported %s -> %s: %d HF tensors (%d ignored), %d parameters, %.2f GB in %.1f s",
                src, out, result.tensors_read, result.tensors_ignored, filled, nbytes / 1e9,
                result.seconds)
    return result


def _build_model(m: ModelConfig) -> list:
    from elama.model.llama import transformer_config
    from elama.parallel.dims import ParallelDims
    from elama.scoring import build_empty_chunks

    single = ParallelDims(tp=1, pp=1, vpp=1, cp=1, dp=1, world_size=1)
    cfg = ElamaConfig(model=m)
    return build_empty_chunks(cfg, transformer_config(m, single, device="cpu"), single)


@contextlib.contextmanager
def _in_process_write_results():
    """megatron's writer hands its write results to the saving process through a queue that,
    once per process, it creates in a spawn-context Manager (filesystem_async.py,
    _get_write_results_queue): a fresh interpreter (~2 s) that then imports torch to unpickle the
    results (~1.3 s), more than half the time of a 1B import on 2 cores. A synchronous save in one
    process (this one) needs no other process: a plain queue, for this save only."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    previous = filesystem_async._results_queue
    filesystem_async._results_queue = queue.Queue()
    try:
        yield
    finally:
        filesystem_async._results_queue = previous


def save_model_once(chunks: list, directory: Path) -> None:
    """checkpoint.save_model for this one process, without a second copy of linear_fc1.

    megatron's writer clones every tensor that is a view into a larger storage
    (filesystem_async.py, _clone_if_needed), all before writing, and the SwiGLU factory saves
    linear_fc1 as two such views (gate, up): +47% of a Llama's bytes. Building each factory here,
    copying its halves and freeing the parameter's storage one layer at a time keeps one copy of
    the model. The same tensors, keys and offsets are saved; the chunks are unusable afterwards.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    def own_storage(x):
        if isinstance(x, ShardedTensor) and x.data.untyped_storage().nbytes() != x.data.nbytes:
            x.data = x.data.clone()
        return x

    def build_and_free(x):
        if not isinstance(x, ShardedTensorFactory):
            return x
        built = x.build()
        dict_list_map_inplace(own_storage, built)
        x.data.untyped_storage().resize_(0)
        return built

    state = checkpoint.model_sharded_state_dict(chunks)
    dict_list_map_inplace(build_and_free, state)
    directory.mkdir(parents=True)
    with _in_process_write_results():
        dist_checkpointing.save(state, str(directory))


def _save(chunks: list, out: Path, m: ModelConfig, src: Path, hf_config: dict) -> None:
    iter_dir = out / checkpoint.iter_name(0)
    save_model_once(chunks, iter_dir / "model")
    checkpoint.write_meta(iter_dir, {
        "kind": "weights", "step": 0, "model": dataclasses.asdict(m),
        "source": {"format": "huggingface", "path": str(src.resolve()), "config": hf_config},
        "tokenizer": {"hf_files_sha256": tokenizer_hashes(src), "vocab_size": m.vocab_size,
                      "bos_token_id": hf_config.get("bos_token_id"),
                      "eos_token_id": hf_config.get("eos_token_id")},
    })
    checkpoint.write_tracker(out, 0)
