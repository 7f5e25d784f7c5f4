"""Writes a megatron-core distributed checkpoint (torch_dist backend) of a whole model in one
process, tensor by tensor: each chunk is filled only when torch.distributed.checkpoint's writer
asks for it, into a buffer reused for every chunk of its size (elama.convert.buffers), so memory
stays at one tensor of each size, whatever the model size.
The counterpart of dist_reader. What import needs; the files are those megatron's own save writes
(.metadata, __0_*.distcp, common.pt, metadata.json), loadable at any tp/pp.

Why not megatron's `dist_checkpointing.save`: its writer stages every tensor of the state dict
in memory before writing (filesystem_async.py, preload_tensors), i.e. a whole 70B model.
"""
from __future__ import annotations

import ctypes
import io
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.default_planner import create_default_global_save_plan
from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, MetadataIndex,
                                                   TensorProperties)
from torch.distributed.checkpoint.planner import (SavePlan, SavePlanner, TensorWriteData,
                                                  WriteItem, WriteItemType)

from elama.convert.buffers import BufferPool

BACKEND = ("torch_dist", 1)


@dataclass(frozen=True)
class ChunkWrite:
    """One region of one global tensor, filled on demand by `fill` (given a tensor of shape
    `sizes` and `dtype`, it writes every element)."""

    key: str
    global_shape: tuple[int, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    dtype: torch.dtype
    fill: Callable[[torch.Tensor], None]

    @property
    def nbytes(self) -> int:
        return math.prod(self.sizes) * self.dtype.itemsize


class _TrackedFileSystem(FileSystem):
    """torch's local file system, remembering the stream it has open: the planner checks on it
    that a chunk was written out before its buffer is filled again."""

    stream = None

    @contextmanager
    def create_stream(self, path, mode):
        with super().create_stream(path, mode) as stream:
            self.stream = stream
            try:
                yield stream
            finally:
                self.stream = None


class _LazySavePlanner(SavePlanner):
    """A fixed plan of chunk and byte writes whose data is resolved only when written."""

    def __init__(self, chunks: Sequence[ChunkWrite], objects: dict[str, bytes],
                 fs: _TrackedFileSystem):
        self.chunks = {self._index(c): c for c in chunks}
        self.objects = objects
        self.fs, self.pool = fs, BufferPool()
        self._handed_out = None  # (stream, its position, bytes) of the last chunk resolved
        # torch resolves one file's chunks in plan order (one file, one thread), so the next one
        # is filled on a second thread while this one is written: reads overlap writes. Two
        # buffer slots alternate by position; a chunk asked for out of order is filled when asked.
        self._position = {index: i for i, index in enumerate(self.chunks)}
        self._order = list(self.chunks)
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="import-read")
        # sync_file_range blocks while the disk's queue is full: on its own thread it does not
        # hold up the next write
        self._writeback = ThreadPoolExecutor(1, thread_name_prefix="import-writeback")
        self._ahead = None  # (index, future of its filled tensor)

    @staticmethod
    def _index(c: ChunkWrite) -> MetadataIndex:
        return MetadataIndex(c.key, torch.Size(c.offsets))

    def set_up_planner(self, state_dict, storage_meta=None, is_coordinator=True) -> None:
        pass

    def create_local_plan(self) -> SavePlan:
        items = [WriteItem(index=index, type=WriteItemType.SHARD, tensor_data=TensorWriteData(
            chunk=ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)),
            properties=TensorProperties(dtype=c.dtype), size=torch.Size(c.global_shape)))
            for index, c in self.chunks.items()]
        items += [WriteItem(index=MetadataIndex(key), type=WriteItemType.BYTE_IO)
                  for key in self.objects]
        return SavePlan(items)

    def create_global_plan(self, all_plans):
        return create_default_global_save_plan(all_plans, rewrite_index_hints=False)

    def finish_plan(self, new_plan: SavePlan) -> SavePlan:
        return new_plan

    def resolve_data(self, write_item: WriteItem):
        if write_item.type == WriteItemType.BYTE_IO:
            return io.BytesIO(self.objects[write_item.index.fqn])
        index = MetadataIndex(write_item.index.fqn, write_item.index.offset)
        self._release_previous()
        tensor = self._filled(index)
        self._fill_ahead(self._position[index] + 1)
        stream = self.fs.stream
        self._handed_out = (stream, stream.tell() if stream else 0, self.chunks[index].nbytes)
        return tensor

    def _buffer(self, index: MetadataIndex) -> torch.Tensor:
        c = self.chunks[index]
        return self.pool.take(c.sizes, c.dtype, slot=self._position[index] % 2)

    def _filled(self, index: MetadataIndex) -> torch.Tensor:
        """The chunk's tensor: the one filled ahead, or filled now (after any fill in flight, so
        two fills never run at once)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            tensor = ahead[1].result()  # a failed fill raises here
            if ahead[0] == index:
                return tensor
        tensor = self._buffer(index)
        self.chunks[index].fill(tensor)
        return tensor

    def _fill_ahead(self, position: int) -> None:
        """Fill the chunk at `position` on the reader thread, in the slot that the chunk before
        the one just handed out used (written already: _release_previous checked it)."""
        if position < len(self._order):
            index = self._order[position]
            tensor = self._buffer(index)
            fill = self.chunks[index].fill

            def filled() -> torch.Tensor:
                fill(tensor)
                return tensor
            self._ahead = (index, self._reader.submit(filled))

    def close(self) -> None:
        """Wait for the fill in flight (after a failure, the chunk nobody asked for) and the
        writebacks started."""
        self._reader.shutdown(wait=True)
        self._writeback.shutdown(wait=True)

    def _release_previous(self) -> None:
        """Check that the previous chunk's bytes are in the stream, so its buffer may be filled
        again, and start writing them back to disk. (torch resolves and writes one item at a time
        when nothing is copied ahead; a torch that resolved ahead would otherwise write one
        chunk's buffer with the next one's data.)"""
        if self._handed_out is None:
            return
        stream, position, nbytes = self._handed_out
        if stream is None or stream is not self.fs.stream or stream.tell() - position < nbytes:
            raise RuntimeError("torch.distributed.checkpoint asked for a chunk before writing the "
                               "previous one; this writer reuses one buffer per chunk size and "
                               "needs FileSystemWriter(per_thread_copy_ahead=0)")
        try:
            fd = stream.fileno()
        except (AttributeError, io.UnsupportedOperation):
            return  # not a file: nothing to write back
        stream.flush()
        # on a duplicate of the descriptor, which stays valid if torch closes the file first
        self._writeback.submit(_writeback_and_close, os.dup(fd), position, stream.tell() - position)


def _libc_sync_file_range():
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None  # not Linux: the final fsync does all the writing back
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_SYNC_FILE_RANGE = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def _writeback_and_close(fd: int, offset: int, nbytes: int) -> None:
    try:
        start_writeback(fd, offset, nbytes)
    finally:
        os.close(fd)


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing a written range back to disk without waiting for it (Linux's
    sync_file_range), so the fsync at the end of the file waits for the last chunk only, not the
    whole checkpoint: the disk works while the next chunks are read and written."""
    if _SYNC_FILE_RANGE is not None and nbytes > 0:
        _SYNC_FILE_RANGE(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def sharded_object_bytes(obj) -> bytes:
    """A megatron ShardedObject as torch_dist stores it (strategies/torch.py,
    _mcore_to_torch_sharded_object: torch.save of the list of the objects' data)."""
    buffer = io.BytesIO()
    torch.save([obj.data], buffer)
    return buffer.getvalue()


def write_dist_checkpoint(directory: str | Path, chunks: Sequence[ChunkWrite],
                          objects: dict[str, bytes]) -> None:
    """Write the chunks (each global tensor fully covered by them) and the byte objects (keyed
    by ShardedObject.unique_key) as one megatron distributed checkpoint in `directory`."""
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
    from megatron.core.dist_checkpointing.strategies.common import COMMON_STATE_FNAME

    directory = Path(directory)
    directory.mkdir(parents=True)
    # No copy-ahead: each chunk is resolved only once the previous one is written (on a machine
    # with a GPU torch would otherwise resolve ahead, into the same buffer).
    writer = FileSystemWriter(str(directory), single_file_per_rank=True, sync_files=True,
                              thread_count=1, per_thread_copy_ahead=0)
    writer.fs = _TrackedFileSystem()
    # Each tensor is a torch.save record; its zip CRC32 is one more pass over the bytes, which
    # nothing reads back (torch.load does not check it, megatron's loader neither).
    from torch.utils.serialization import config as serialization

    planner = _LazySavePlanner(chunks, objects, writer.fs)
    try:
        with serialization.patch({"save.compute_crc32": False}):
            dcp_save({}, storage_writer=writer, planner=planner, no_dist=True)
    finally:
        planner.close()
    torch.save({}, directory / COMMON_STATE_FNAME)  # the model's state dict has no common part
    save_config(CheckpointingConfig(*BACKEND), directory)
