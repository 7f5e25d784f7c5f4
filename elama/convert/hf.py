"""Streamed I/O of Hugging Face checkpoint directories: config.json, safetensors shards read one
tensor (or row range) at a time, a sharded safetensors writer, side files, and output directories
staged under a temporary name so no half-written checkpoint ever carries the final name. No megatron."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from elama.convert.safetensors_file import (CheckpointError, ShardFile, TensorMeta, pread_rows,
                                            scan_shard)

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# The files that define token ids: two checkpoints whose copies differ do not share a vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer.model",
              "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "chat_template.json")
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # the Hub's usual 5 GB shards

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
               "GIB": 2**30}


def parse_size(text: str) -> int:
    """Bytes of a size such as 5GB, 500MB or 2GiB (shard sizes on the command line)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size like 5GB or 500MB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def read_json(path: Path) -> dict:
    """A JSON object from path, or a CheckpointError naming the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_hashes(ckpt_dir: str | os.PathLike) -> dict[str, str]:
    """sha256 of each vocabulary-defining tokenizer file present in ckpt_dir."""
    present = [Path(ckpt_dir) / n for n in TOKENIZER_FILES if (Path(ckpt_dir) / n).is_file()]
    return {p.name: file_sha256(p) for p in present}


class HFCheckpointReader:
    """A Hugging Face checkpoint directory read lazily: config, tensor names, metadata, tensors.

    Every shard header is read at construction, so names(), meta() and consistency errors come
    before any tensor data. Reads are positional (pread) of exactly the bytes asked for: nothing
    is memory-mapped, so resident memory is only what the caller holds (mapped pages stay in the
    resident set until unmapped), and read_rows_into() fills reused buffers without page faults.
    """

    def __init__(self, ckpt_dir: str | os.PathLike):
        self.path = Path(ckpt_dir)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a directory")
        self.config = read_json(self.path / CONFIG_FILE)
        self._fds: dict[str, int] = {}
        self._meta: dict[str, TensorMeta] = {}
        try:
            self._scan(self._shard_map())
        except BaseException:
            self.close()
            raise

    def _shard_map(self) -> dict[str, set[str]] | None:
        """shard file -> names the index puts there; None for a single unindexed model.safetensors."""
        if (self.path / INDEX_FILE).is_file():
            weight_map = read_json(self.path / INDEX_FILE).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{self.path / INDEX_FILE}: no 'weight_map' object")
            shards: dict[str, set[str]] = {}
            for name, shard in weight_map.items():
                shards.setdefault(shard, set()).add(name)
            return dict(sorted(shards.items()))
        if (self.path / SINGLE_FILE).is_file():
            return None
        raise CheckpointError(f"{self.path}: neither {INDEX_FILE} nor {SINGLE_FILE}; only "
                              "safetensors checkpoints are supported (convert .bin with transformers)")

    def _scan(self, shard_map: dict[str, set[str]] | None) -> None:
        for shard in shard_map or [SINGLE_FILE]:
            if not (self.path / shard).is_file():
                raise CheckpointError(f"{self.path / INDEX_FILE}: lists shard {shard}, which is missing")
            metas = scan_shard(self.path / shard)
            keys = {m.name for m in metas}
            if shard_map is not None and keys != shard_map[shard]:
                missing, extra = sorted(shard_map[shard] - keys), sorted(keys - shard_map[shard])
                raise CheckpointError(
                    f"{self.path / INDEX_FILE} disagrees with {shard}: index-only tensors "
                    f"{missing[:3]} ({len(missing)}), shard-only tensors {extra[:3]} ({len(extra)})")
            self._meta.update((m.name, m) for m in metas)
            self._fds[shard] = os.open(self.path / shard, os.O_RDONLY)

    def names(self) -> list[str]:
        """Tensor names, shard by shard in file order (a pass over them reads sequentially)."""
        return list(self._meta)

    def __contains__(self, name: str) -> bool:
        return name in self._meta

    def __len__(self) -> int:
        return len(self._meta)

    def meta(self, name: str) -> TensorMeta:
        try:
            return self._meta[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor named {name}") from None

    @property
    def total_bytes(self) -> int:
        return sum(m.nbytes for m in self._meta.values())

    def get(self, name: str) -> torch.Tensor:
        """The whole tensor, freshly allocated and owned by the caller."""
        meta = self.meta(name)
        out = torch.empty(meta.shape, dtype=meta.dtype)
        return self.read_rows_into(name, 0, out)

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) along dim 0, freshly allocated."""
        meta = self.meta(name)
        out = torch.empty((max(stop - start, 0), *meta.shape[1:]), dtype=meta.dtype)
        return self.read_rows_into(name, start, out)

    def read_rows_into(self, name: str, start: int, out: torch.Tensor) -> torch.Tensor:
        """Fill out (contiguous, of the tensor's dtype and trailing shape) with the rows from start
        along dim 0 (a scalar: out of shape ()); return out."""
        meta = self.meta(name)
        return pread_rows(self._fds[meta.shard], self.path / meta.shard, meta, start, out)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> HFCheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ShardedSafetensorsWriter:
    """Writes tensors into safetensors shards of at most max_shard_bytes (a larger tensor gets a
    shard of its own), named as transformers' save_pretrained names them: model.safetensors when
    one shard is enough, else model-0000i-of-0000N.safetensors and model.safetensors.index.json.

    Buffered mode: add() keeps a reference to each tensor until its shard is full (up to one
    shard in memory; do not modify a tensor after adding it).
    Planned mode: plan() declares every (name, shape, dtype) first, so each shard's header is
    known and add() / add_rows() write straight to disk, holding nothing. N is known only at
    close(): shards are written under temporary names and renamed there.
    """

    def __init__(self, out_dir: str | os.PathLike, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 *, metadata: dict[str, str] | None = None):
        if max_shard_bytes <= 0:
            raise CheckpointError(f"max_shard_bytes={max_shard_bytes} must be positive")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        taken = sorted(p.name for p in self.out_dir.glob("model*.safetensors*"))
        if taken:
            raise CheckpointError(f"{self.out_dir}: already holds weights {taken[:3]}; "
                                  "write into an empty directory")
        self.max_shard_bytes = max_shard_bytes
        # transformers refuses safetensors files whose header lacks the format entry.
        self.metadata = {"format": "pt", **(metadata or {})}
        self._pending: dict[str, torch.Tensor] = {}
        self._shards: list[ShardFile] = []
        self._planned: dict[str, ShardFile] | None = None
        self._names: set[str] = set()
        self.total_bytes = 0
        self._index: dict | None = None

    @property
    def num_tensors(self) -> int:
        return len(self._names)

    def plan(self, tensors: Iterable[tuple[str, Sequence[int], torch.dtype]]) -> None:
        """Declare every (name, shape, dtype) that will be written, in order, before any add()."""
        if self._names:
            raise CheckpointError(f"{self.out_dir}: plan() must come first and only once")
        metas = [TensorMeta(n, "", tuple(shape), dtype) for n, shape, dtype in tensors]
        for m in metas:
            self._register(m.name, m.nbytes)
        self._planned = {}
        for group in self._group(metas):
            shard = self._new_shard(group)
            self._planned.update(dict.fromkeys(shard.metas, shard))

    def _register(self, name: str, nbytes: int) -> None:
        if self._index is not None:
            raise CheckpointError(f"{self.out_dir}: writer is closed; cannot add {name}")
        if name in self._names:
            raise CheckpointError(f"{self.out_dir}: tensor {name} added twice")
        self._names.add(name)
        self.total_bytes += nbytes

    def _group(self, metas: Sequence[TensorMeta]) -> list[list[TensorMeta]]:
        """Consecutive tensors packed greedily into shards of at most max_shard_bytes."""
        groups, size = [[]], 0
        for m in metas:
            if groups[-1] and size + m.nbytes > self.max_shard_bytes:
                groups, size = groups + [[]], 0
            groups[-1].append(m)
            size += m.nbytes
        return groups

    def _new_shard(self, metas: Sequence[TensorMeta]) -> ShardFile:
        path = self.out_dir / f".tmp-shard-{len(self._shards) + 1:05d}.safetensors"
        self._shards.append(ShardFile(path, metas, self.metadata))
        return self._shards[-1]

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write a whole tensor (planned mode) or buffer it (buffered mode)."""
        if self._planned is not None:
            self.add_rows(name, 0, tensor)
            return
        tensor = tensor.detach().contiguous()
        self._register(name, tensor.nbytes)
        pending_bytes = sum(t.nbytes for t in self._pending.values())
        if self._pending and pending_bytes + tensor.nbytes > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor

    def add_rows(self, name: str, start: int, tensor: torch.Tensor) -> None:
        """Planned mode: write rows [start, start + len(tensor)) of name; rows come in order."""
        if self._planned is None or name not in self._planned:
            raise CheckpointError(f"{self.out_dir}: tensor {name} was not declared by plan()")
        self._planned[name].write_rows(name, start, tensor.detach().contiguous())

    def _flush(self) -> None:
        shard = self._new_shard([TensorMeta(n, "", tuple(t.shape), t.dtype)
                                 for n, t in self._pending.items()])
        for name, tensor in self._pending.items():
            shard.write_rows(name, 0, tensor)
        shard.close()
        self._pending = {}

    def close(self) -> dict:
        """Write what is buffered, give shards their final names, write the index; return it."""
        if self._index is not None:
            return self._index
        if self._pending:
            self._flush()
        incomplete = [n for s in self._shards for n in s.incomplete()]
        if incomplete or not self._shards:
            self.abort()
            raise CheckpointError(f"{self.out_dir}: nothing written: " + (
                f"{len(incomplete)} planned tensor(s) incomplete, e.g. {incomplete[:3]}"
                if incomplete else "no tensors were added"))
        count, weight_map = len(self._shards), {}
        for i, shard in enumerate(self._shards, start=1):
            shard.close()
            final = SINGLE_FILE if count == 1 else f"model-{i:05d}-of-{count:05d}.safetensors"
            shard.path.rename(self.out_dir / final)
            weight_map.update(dict.fromkeys(shard.metas, final))
        self._index = {"metadata": {"total_size": self.total_bytes},
                       "weight_map": dict(sorted(weight_map.items()))}
        if count > 1:
            write_json(self.out_dir / INDEX_FILE, self._index)
        return self._index

    def abort(self) -> None:
        """Delete the temporary shards written so far (the caller owns the directory)."""
        for shard in self._shards:
            shard.close()
            shard.path.unlink(missing_ok=True)
        self._shards, self._pending = [], {}

    def __enter__(self) -> ShardedSafetensorsWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def copy_side_files(src_dir: str | os.PathLike, dst_dir: str | os.PathLike,
                    names: Sequence[str] = SIDE_FILES) -> list[str]:
    """Copy the named non-weight files that exist in src_dir (config, tokenizer, ...); return them."""
    copied = [n for n in names if (Path(src_dir) / n).is_file()]
    for name in copied:
        shutil.copyfile(Path(src_dir) / name, Path(dst_dir) / name)
    return copied


def check_output_dir(final_dir: str | os.PathLike, *, force: bool) -> None:
    """Refuse an existing output unless force; never accept a file where a directory should go."""
    final = Path(final_dir)
    if final.exists() and not final.is_dir():
        raise CheckpointError(f"{final}: exists and is not a directory")
    if final.exists() and not force:
        raise CheckpointError(f"{final}: output directory exists; pass --force (force=True) to "
                              "replace it once the new one is complete")


@contextlib.contextmanager
def staged_output_dir(final_dir: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside final_dir; on success it becomes final_dir.

    On an exception the temporary directory is deleted and final_dir is untouched. With force an
    existing final_dir is replaced only after the new one is complete.
    """
    final = Path(final_dir)
    check_output_dir(final, force=force)
    final.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir, not tempfile.mkdtemp: the directory gets the umask's permissions, not 0700.
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if not force:  # appeared while we were writing
            raise CheckpointError(f"{final}: appeared while writing; the new output is kept at {tmp}")
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
        final.rename(old)  # the old output goes only once the new one is complete
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
