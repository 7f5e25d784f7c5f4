"""The safetensors file format at the byte level: header parsing (validated by safetensors
itself) into TensorMeta with data offsets, positional reads of row ranges into caller buffers, and
a shard file laid out up front whose tensors are written in place. HF directories: hf.py."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read or written as asked; the message names the file."""


@dataclass(frozen=True)
class TensorMeta:
    """Where a tensor lives and what it is, read from the shard header without loading data."""

    name: str
    shard: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    data_offset: int = 0
    """Byte offset of the tensor's data from the start of its shard file."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def rows(self) -> int:
        """Length of dim 0; a scalar counts as one row."""
        return self.shape[0] if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize


def byte_view(tensor: torch.Tensor) -> memoryview:
    """A contiguous tensor's storage as writable bytes, no copy."""
    return tensor.reshape(-1).view(torch.uint8).numpy().data


def check_rows(where: Path, meta: TensorMeta, start: int, tensor: torch.Tensor) -> int:
    """Rows [start, start + n) of meta held by tensor: check dtype, shape and range; return n."""
    count = len(tensor) if meta.shape else 1
    trailing = tuple(tensor.shape[1:]) if meta.shape else tuple(tensor.shape)
    if (tensor.dtype != meta.dtype or trailing != meta.shape[1:] or not tensor.is_contiguous()
            or not 0 <= start <= start + count <= meta.rows):
        raise CheckpointError(f"{where}: rows [{start}, {start + count}) of tensor {meta.name} "
                              f"{list(meta.shape)} {meta.dtype} do not fit a {list(tensor.shape)} "
                              f"{tensor.dtype} tensor")
    return count


def scan_shard(path: Path) -> list[TensorMeta]:
    """Metadata of every tensor in a safetensors file, in file order.

    safetensors' own parser validates the file (header, offsets covering the data exactly); the
    header is then read here for the data offsets, which safe_open does not expose.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            layout = {n: (f.get_slice(n).get_dtype(), tuple(f.get_slice(n).get_shape()))
                      for n in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad files
        raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from e
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    metas = []
    for name, (dtype_str, shape) in layout.items():
        if dtype_str not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {dtype_str}")
        offset = 8 + header_len + header[name]["data_offsets"][0]
        metas.append(TensorMeta(name, path.name, shape, _DTYPES[dtype_str], offset))
    return sorted(metas, key=lambda m: m.data_offset)


def pread_rows(fd: int, path: Path, meta: TensorMeta, start: int, out: torch.Tensor) -> torch.Tensor:
    """Read rows from start of the tensor meta (in the file open as fd) into out; return out."""
    check_rows(path, meta, start, out)
    pread_exact(fd, byte_view(out), meta.data_offset + start * meta.row_bytes,
                f"{path}: ends inside tensor {meta.name}")
    return out


def pread_exact(fd: int, buf: memoryview, offset: int, short_read: str) -> None:
    """Fill buf from the file at offset (preadv, straight into buf); a file that ends first is
    a CheckpointError saying short_read."""
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            raise CheckpointError(short_read)
        done += n


class ShardFile:
    """One safetensors file laid out up front: header written, then data written in place."""

    def __init__(self, path: Path, metas: Sequence[TensorMeta], metadata: dict[str, str]):
        # Widest dtypes first keeps every tensor's offset aligned to its element size.
        ordered = sorted(metas, key=lambda m: -m.dtype.itemsize)
        header, begin = {"__metadata__": metadata}, 0
        for m in ordered:
            header[m.name] = {"dtype": _DTYPE_NAMES[m.dtype], "shape": list(m.shape),
                              "data_offsets": [begin, begin + m.nbytes]}
            begin += m.nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the format allows space padding; 8 aligns the data
        self.path = path
        self.metas = {m.name: replace(m, data_offset=8 + len(text) + header[m.name]["data_offsets"][0])
                      for m in ordered}
        self.rows_done = dict.fromkeys(self.metas, 0)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(self.fd, len(text).to_bytes(8, "little") + text)
        os.ftruncate(self.fd, 8 + len(text) + begin)

    def write_rows(self, name: str, start: int, tensor: torch.Tensor) -> None:
        meta = self.metas[name]
        count = check_rows(self.path, meta, start, tensor)
        if start != self.rows_done[name]:
            raise CheckpointError(f"{self.path}: tensor {name} rows must come in order: expected "
                                  f"row {self.rows_done[name]}, got {start}")
        buf, offset, done = byte_view(tensor), meta.data_offset + start * meta.row_bytes, 0
        while done < len(buf):
            done += os.pwritev(self.fd, [buf[done:]], offset + done)
        self.rows_done[name] = start + count

    def incomplete(self) -> list[str]:
        return [n for n, m in self.metas.items() if self.rows_done[n] != m.rows]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
