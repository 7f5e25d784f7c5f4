"""elama checkpoint (trainer or converted; any tp/pp it was saved with) -> Hugging Face Llama 3.1
directory: sharded safetensors + index, config.json, generation_config.json, tokenizer files.

Streamed one tensor group at a time (the embedding, each layer, the final norm, the output layer)
straight from the distributed checkpoint's files, so memory holds one layer, never the model.
No process groups and no model are needed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from elama import checkpoint
from elama.config import ModelConfig
from elama.convert.buffers import BufferPool
from elama.convert.dist_reader import DistCheckpointReader
from elama.convert.hf import (DEFAULT_MAX_SHARD_BYTES, ShardedSafetensorsWriter, check_output_dir,
                              staged_output_dir, write_json)
from elama.convert.peft import checkpoint_lora, is_adapter_key, merge_into_group
from elama.convert.mapping import (DTYPE_NAMES, LLAMA3_BOS_ID, LLAMA3_EOS_ID, ConversionError,
                                   TensorEntry, build_name_table, groups, hf_config_from_model)

logger = logging.getLogger(__name__)

# Meta's Llama 3.1 sampling defaults; generation stops at any of the end markers a base or an
# instruction-tuned model emits (<|end_of_text|>, <|eom_id|>, <|eot_id|>).
GENERATION_DEFAULTS = {"do_sample": True, "temperature": 0.6, "top_p": 0.9}
END_TOKENS = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    model: ModelConfig
    tensors_written: int
    """HF tensors written."""
    bytes_written: int
    """Weight bytes in the safetensors shards."""
    files: tuple[str, ...]
    seconds: float


def check_checkpoint_tensors(reader: DistCheckpointReader, m: ModelConfig, *,
                             adapters: bool = False) -> torch.dtype:
    """Every key, shape and dtype checked against the model before any tensor moves; returns the
    weights' dtype. With `adapters`, LoRA adapter tensors are expected beside the weights."""
    problems, dtypes = [], set()
    # Layer tensors are stacked along a leading axis of num_layers.
    expected = {e.ckpt_key: e.shape if e.layer is None else (m.num_layers, *e.shape)
                for e in build_name_table(m)}
    for key, shape in expected.items():
        if key not in reader.tensors:
            problems.append(f"tensor {key} is missing")
        elif reader.shape(key) != shape:
            problems.append(f"tensor {key} has shape {list(reader.shape(key))}, the model in "
                            f"meta.json implies {list(shape)}")
        else:
            dtypes.add(reader.dtype(key))
    unknown = sorted(k for k in set(reader.tensors) - set(expected)
                     if not (adapters and is_adapter_key(k)))
    if unknown:
        problems.append(f"tensors the model does not have: {unknown[:5]}")
    if len(dtypes) > 1:
        problems.append(f"weights mix dtypes {sorted(map(str, dtypes))}")
    if problems:
        raise ConversionError(str(reader.path), problems)
    return dtypes.pop()


def _load_tokenizer(path: str | None, m: ModelConfig):
    from elama.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(path)
    if tokenizer.vocab_size > m.vocab_size:
        raise ConversionError(tokenizer.model_path, [
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{m.vocab_size}: pass the model's own tokenizer.model, or export without tokenizer"])
    return tokenizer


def _read_group(reader: DistCheckpointReader, entries: list[TensorEntry],
                pool: BufferPool) -> dict[str, torch.Tensor]:
    """One group's megatron tensors, each read once (a layer's in one request), into the pool's
    buffers: the next group of the same shapes reuses them."""
    loaded, requests = {}, {}
    for slot, e in enumerate(entries):
        dest = loaded[e.ckpt_key] = pool.take(e.shape, reader.dtype(e.ckpt_key), slot)
        if e.layer is None:
            requests[e.ckpt_key] = ((0,) * len(e.shape), dest)
        else:  # row e.layer of the stacked (num_layers, ...) tensor
            requests[e.ckpt_key] = ((e.layer,) + (0,) * len(e.shape), dest.unsqueeze(0))
    reader.read_into(requests)
    return loaded


def _write_weights(reader: DistCheckpointReader, table: list[TensorEntry], m: ModelConfig,
                   out: Path, dtype: torch.dtype, max_shard_bytes: int, progress: bool,
                   merge_lora: dict | None = None) -> dict:
    writer = ShardedSafetensorsWriter(out, max_shard_bytes)
    writer.plan((name, shape, dtype) for e in table for name, shape in zip(e.hf, e.hf_shapes))
    bar = tqdm(total=sum(e.numel for e in table) * dtype.itemsize, unit="B", unit_scale=True,
               desc="export", disable=not progress)
    pool = BufferPool()
    try:
        for group, entries in groups(table):
            bar.set_postfix_str(group)
            loaded = _read_group(reader, entries, pool)
            if merge_lora:
                merge_into_group(loaded, entries, reader, merge_lora)
            for e in entries:
                # Each HF tensor is written as the row runs the megatron tensor holds it in.
                tensor = loaded.pop(e.ckpt_key)
                for p in e.transform.pieces(e.shape[0], m):
                    writer.add_rows(e.hf[p.part], p.src, tensor[p.dst:p.dst + p.rows].to(dtype))
            bar.update(sum(e.numel for e in entries) * dtype.itemsize)
        return writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()


def export_hf(ckpt: str | Path, out: str | Path, *, dtype: torch.dtype | None = None,
              tokenizer_path: str | None = None, with_tokenizer: bool = True,
              max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, force: bool = False,
              progress: bool = True, lora: str = "merge") -> ExportResult:
    """Convert an elama checkpoint (run directory or iter_NNNNNNN) into the HF directory out.

    dtype: of the written weights (default: the checkpoint's). tokenizer_path: the Llama 3
    tokenizer.model to make the tokenizer files from (default: the run's data.tokenizer_path, else
    the one shipped with llama-models). The output appears under its final name only when complete.
    lora (a checkpoint with LoRA adapters): "merge" writes W + (alpha / r) B A, "base" the frozen
    base weights alone (the model elama.convert.peft's adapter directory is loaded on).
    """
    from elama.scoring import model_config_from_meta

    start = time.perf_counter()
    iter_dir = checkpoint.resolve(ckpt)
    meta = checkpoint.read_meta(iter_dir)
    m = model_config_from_meta(meta, iter_dir / "meta.json")
    reader = DistCheckpointReader(iter_dir / "model")
    table = build_name_table(m)
    adapters = checkpoint_lora(meta)
    if lora not in ("merge", "base"):
        raise ConversionError("export", [f"lora={lora!r} is not 'merge' or 'base'"])
    stored = check_checkpoint_tensors(reader, m, adapters=adapters is not None)
    dtype = dtype or stored
    if dtype not in DTYPE_NAMES:
        raise ConversionError("export", [f"dtype {dtype} is not one of {list(DTYPE_NAMES)}"])
    tokenizer = None
    if with_tokenizer:
        run_tokenizer = (meta.get("config") or {}).get("data", {}).get("tokenizer_path")
        tokenizer = _load_tokenizer(tokenizer_path or run_tokenizer, m)
    check_output_dir(out, force=force)
    with staged_output_dir(out, force=force) as tmp:
        index = _write_weights(reader, table, m, tmp, dtype, max_shard_bytes, progress,
                               merge_lora=adapters if lora == "merge" else None)
        _write_configs(tmp, m, dtype, tokenizer, recorded_special_ids(meta))
        if tokenizer is not None:
            from elama.convert.hf_tokenizer import write_hf_tokenizer

            write_hf_tokenizer(tmp, tokenizer, model_max_length=m.max_seq_len_tokens)
        files = tuple(sorted(p.name for p in tmp.iterdir()))
    result = ExportResult(Path(out), m, len(index["weight_map"]), index["metadata"]["total_size"],
                          files, time.perf_counter() - start)
    logger.info("exported %s -> %s: %d tensors, %.2f GB %s in %.1f s", iter_dir, out,
                result.tensors_written, result.bytes_written / 1e9, DTYPE_NAMES[dtype],
                result.seconds)
    return result


def recorded_special_ids(meta: dict, max_hops: int = 8) -> tuple[int, int | list[int]] | None:
    """(bos, eos) recorded when the weights were imported: in this checkpoint's meta, else in
    the checkpoints it was initialised from (checkpoint.init_from), newest first."""
    for _ in range(max_hops):
        recorded = meta.get("tokenizer") or {}
        if recorded.get("bos_token_id") is not None and recorded.get("eos_token_id") is not None:
            return recorded["bos_token_id"], recorded["eos_token_id"]
        source = ((meta.get("config") or {}).get("checkpoint") or {}).get("init_from")
        if not source:
            return None
        try:
            meta = checkpoint.read_meta(checkpoint.resolve(source))
        except checkpoint.CheckpointError:
            logger.warning("checkpoint.init_from=%s is gone: bos/eos ids not traced to the "
                           "import; using Llama 3's", source)
            return None
    return None


def _write_configs(out: Path, m: ModelConfig, dtype: torch.dtype, tokenizer,
                   recorded: tuple | None) -> None:
    if tokenizer is not None:
        bos, eos = tokenizer.bos_id, tokenizer.eos_id
        ends = [tokenizer.special_tokens[t] for t in END_TOKENS]
    elif recorded is not None:  # the imported model's own ids win over Llama 3's
        bos, eos = recorded
        ends = list(eos) if isinstance(eos, list) else [eos]
    else:
        bos, eos, ends = LLAMA3_BOS_ID, LLAMA3_EOS_ID, [LLAMA3_EOS_ID]
    write_json(out / "config.json", hf_config_from_model(m, dtype, bos_token_id=bos,
                                                         eos_token_id=eos))
    write_json(out / "generation_config.json",
               {"bos_token_id": bos, "eos_token_id": ends, **GENERATION_DEFAULTS})


def generate_with_transformers(hf_dir: str | Path, prompt: str, *, max_new_tokens: int = 8
                               ) -> tuple[list[int], list[int], str]:
    """Greedy generation with transformers from an exported directory (the demo's last step and
    the proof that the export is a working HF model): (prompt ids, all ids, new text)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir))
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    prompt_ids, ids = inputs["input_ids"][0].tolist(), out[0].tolist()
    return prompt_ids, ids, tokenizer.decode(ids[len(prompt_ids):])
