"""Where a tensor's bytes lie inside a torch_dist checkpoint file, so export can copy them
straight out of the page cache instead of through torch.load.

Each chunk in a .distcp file is one torch.save record (an uncompressed zip: data.pkl, the
storage as data/0, byteorder, ...), at the offset and length the checkpoint's .metadata names.
torch.distributed.checkpoint reads a record into a BytesIO, torch.loads it into a fresh tensor
and copies that into the destination: three passes over fresh memory. Here the record's zip
directory and its pickle are read (the pickle by an unpickler that knows only a tensor's rebuild
function, a storage type and OrderedDict), and a record is used directly only if it is one
contiguous little-endian tensor, of the stored chunk's shape and dtype, with no extension
transforms. Anything else gets None, and the caller reads that key through torch's own path.
"""
from __future__ import annotations

import io
import math
import mmap
import os
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from elama.convert.safetensors_file import TensorMeta, byte_view, pread_exact

# torch.save's legacy storage class names, as its pickles spell them.
_STORAGE_DTYPES = {"BFloat16Storage": torch.bfloat16, "FloatStorage": torch.float32,
                   "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
                   "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ByteStorage": torch.uint8, "BoolStorage": torch.bool}
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then (at 26) name and extra lengths


class _Unsupported(Exception):
    pass


class _Storage:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild(storage, storage_offset, size, stride, *rest):
    return {"storage": storage, "offset": storage_offset, "size": tuple(size),
            "stride": tuple(stride)}


class _TensorPickle(pickle.Unpickler):
    """Reads torch.save's data.pkl of one tensor into a description, constructing nothing."""

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Storage(_STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise _Unsupported(f"{module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or not isinstance(storage_type, _Storage):
            raise _Unsupported(str(pid))
        return {"dtype": storage_type.dtype, "key": str(key), "numel": int(numel)}


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


class RecordFiles:
    """The .distcp files of one checkpoint directory, memory-mapped on first use."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._maps: dict[str, mmap.mmap] = {}
        self._fds: dict[str, int] = {}

    def _map(self, name: str) -> mmap.mmap:
        if name not in self._maps:
            with open(self.directory / name, "rb") as f:
                # Copy-on-write: torch.frombuffer wants a writable buffer; nothing is written.
                self._maps[name] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._maps[name]

    def layout(self, info, shape: tuple[int, ...], dtype: torch.dtype) -> TensorMeta | None:
        """The layout of the record at storage info `info` (a _StorageInfo), if it is a plain
        tensor of this shape and dtype; else None."""
        if getattr(info, "transform_descriptors", None):
            return None
        mm = self._map(info.relative_path)
        record = memoryview(mm)[info.offset:info.offset + info.length]
        try:
            return self._parse(record, info, shape, dtype)
        except (_Unsupported, zipfile.BadZipFile, pickle.UnpicklingError, KeyError, ValueError,
                TypeError, struct.error, EOFError):
            return None
        finally:
            record.release()

    def _parse(self, record: memoryview, info, shape, dtype) -> TensorMeta | None:
        entries = {i.filename.split("/", 1)[-1]: i
                   for i in zipfile.ZipFile(_View(record)).infolist()}
        meta = _TensorPickle(io.BytesIO(_entry_bytes(record, entries["data.pkl"]))).load()
        order = _entry_bytes(record, entries["byteorder"]).decode() if "byteorder" in entries \
            else "little"
        storage = meta["storage"]
        data = entries.get(f"data/{storage['key']}")
        if (data is None or data.compress_type != zipfile.ZIP_STORED or order != sys.byteorder
                or storage["dtype"] != dtype or meta["offset"] != 0 or meta["size"] != shape
                or meta["stride"] != _contiguous_strides(shape)
                or storage["numel"] != math.prod(shape)
                or data.file_size != math.prod(shape) * dtype.itemsize):
            return None
        # A TensorMeta whose "shard" is the .distcp file and offset the tensor's first byte.
        return TensorMeta(storage["key"], info.relative_path, shape, dtype,
                          info.offset + _data_start(record, data))

    def copy_box(self, layout: TensorMeta, offsets, lengths, dest: torch.Tensor) -> None:
        """Copy the box [offsets, offsets + lengths) of the record's tensor into dest (of the
        box's shape, any dtype). A contiguous box of the same dtype is read with pread, straight
        into dest; any other through a view of the mapped file, whose pages are then dropped
        from this process (file pages mapped here would otherwise count as its memory)."""
        mm = self._map(layout.shard)
        nbytes = layout.nbytes
        whole = torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=layout.data_offset)
        src = whole.view(layout.dtype).view(layout.shape)
        for dim, (start, length) in enumerate(zip(offsets, lengths)):
            src = src.narrow(dim, start, length)
        if src.is_contiguous() and dest.is_contiguous() and dest.dtype == src.dtype:
            pread_exact(self._fd(layout.shard), byte_view(dest),
                        layout.data_offset + src.storage_offset() * src.element_size(),
                        f"{self.directory / layout.shard}: ends inside a tensor")
            return
        dest.copy_(src)
        del src, whole
        start = layout.data_offset - layout.data_offset % mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, start, layout.data_offset + nbytes - start)

    def _fd(self, name: str) -> int:
        if name not in self._fds:
            self._fds[name] = os.open(self.directory / name, os.O_RDONLY)
        return self._fds[name]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        for mm in self._maps.values():
            mm.close()
        self._fds, self._maps = {}, {}


class _View(io.RawIOBase):
    """A seekable file over a memoryview, for zipfile's directory reads (no copy of the record)."""

    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: len(self.buf)}[whence]
        self.pos = max(base + offset, 0)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        n = max(min(len(b), len(self.buf) - self.pos), 0)
        b[:n] = self.buf[self.pos:self.pos + n]
        self.pos += n
        return n


def _data_start(record: memoryview, info: zipfile.ZipInfo) -> int:
    signature, name_len, extra_len = _LOCAL_HEADER.unpack_from(record, info.header_offset)
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile("no local header")
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _entry_bytes(record: memoryview, info: zipfile.ZipInfo) -> bytes:
    # Read by hand: torch.save may leave CRC-32s unset, which zipfile's reader would refuse.
    start = _data_start(record, info)
    return bytes(record[start:start + info.compress_size])
