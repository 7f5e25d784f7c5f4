"""Writes a megatron-core distributed checkpoint (torch_dist backend) of a whole model in one
process, tensor by tensor: each chunk is produced only when torch.distributed.checkpoint's writer
asks for it and dropped once written, so memory stays at one tensor, whatever the model size.
The counterpart of dist_reader. What import needs; the files are those megatron's own save writes
(.metadata, __0_*.distcp, common.pt, metadata.json), loadable at any tp/pp.

Why not megatron's `dist_checkpointing.save`: its writer stages every tensor of the state dict
in memory before writing (filesystem_async.py, preload_tensors), i.e. a whole 70B model.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.default_planner import create_default_global_save_plan
from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, MetadataIndex,
                                                   TensorProperties)
from torch.distributed.checkpoint.planner import (SavePlan, SavePlanner, TensorWriteData,
                                                  WriteItem, WriteItemType)

BACKEND = ("torch_dist", 1)


@dataclass(frozen=True)
class ChunkWrite:
    """One region of one global tensor, made on demand by `make` (of shape `sizes`)."""

    key: str
    global_shape: tuple[int, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.sizes) * self.dtype.itemsize


class _LazySavePlanner(SavePlanner):
    """A fixed plan of chunk and byte writes whose data is resolved only when written."""

    def __init__(self, chunks: Sequence[ChunkWrite], objects: dict[str, bytes]):
        self.chunks = {self._index(c): c for c in chunks}
        self.objects = objects

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
        c = self.chunks[MetadataIndex(write_item.index.fqn, write_item.index.offset)]
        tensor = c.make()
        if tuple(tensor.shape) != c.sizes or tensor.dtype != c.dtype:
            raise ValueError(f"{c.key} at {list(c.offsets)}: made {list(tensor.shape)} "
                             f"{tensor.dtype}, planned {list(c.sizes)} {c.dtype}")
        return tensor


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
    writer = FileSystemWriter(str(directory), single_file_per_rank=True, sync_files=True,
                              thread_count=1)
    # Each tensor is a torch.save record; its zip CRC32 is one more pass over the bytes, which
    # nothing reads back (torch.load does not check it, megatron's loader neither).
    from torch.utils.serialization import config as serialization

    with serialization.patch({"save.compute_crc32": False}):
        dcp_save({}, storage_writer=writer, planner=_LazySavePlanner(chunks, objects), no_dist=True)
    torch.save({}, directory / COMMON_STATE_FNAME)  # the model's state dict has no common part
    save_config(CheckpointingConfig(*BACKEND), directory)
