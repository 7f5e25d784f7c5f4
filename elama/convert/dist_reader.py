"""Reads chosen slices of the global tensors in a megatron-core distributed checkpoint (torch_dist
backend) in one process, without process groups or a model: what streaming export needs.

Why not megatron's own `dist_checkpointing.load` with ShardedTensors for one layer: in a world of
one process, megatron-core 0.16.1 places the fragments it does not request on rank
`(rank + 1) % world_size`, i.e. on this very rank (strategies/torch.py,
sharded_tensor_to_torch_sharded_tensor), and torch then refuses the ShardedTensor ("Number of
local shards (1) does not match ..."). So the request is planned here, with torch.distributed.checkpoint's
own resharding helper, against the same files: only the stored chunks that overlap the request
are read, whatever tp/pp layout wrote them. Each stored chunk that is a plain tensor record is
copied straight from the memory-mapped file (elama.convert.dist_records); a key with any other
record is read through torch.distributed.checkpoint's load.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from megatron.core.dist_checkpointing.strategies.cached_metadata_filesystem_reader import (
    CachedMetadataFileSystemReader)
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from elama.convert.dist_records import RecordFiles
from elama.convert.safetensors_file import CheckpointError

SUPPORTED_BACKEND = "torch_dist"


class _SlicePlanner(LoadPlanner):
    """Reads, for each key, the region [offsets, offsets + dest.shape) into dest."""

    def __init__(self, requests: Mapping[str, tuple[Sequence[int], torch.Tensor]]):
        self.requests = requests

    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False) -> None:
        self.metadata = metadata

    def create_local_plan(self) -> LoadPlan:
        items: list[ReadItem] = []
        for key, (offsets, dest) in self.requests.items():
            stored = self.metadata.state_dict_metadata[key]
            chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=dest.shape)
            items += create_read_items_for_chunk_list(key, stored, [chunk])
        return LoadPlan(items)

    def create_global_plan(self, global_plan: list[LoadPlan]) -> list[LoadPlan]:
        return global_plan

    def finish_plan(self, central_plan: LoadPlan) -> LoadPlan:
        return central_plan

    def load_bytes(self, read_item: ReadItem, value) -> None:
        raise CheckpointError(f"{read_item.dest_index.fqn}: not a tensor")

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        return _box(self.requests[read_item.dest_index.fqn][1], read_item.dest_offsets,
                    read_item.lengths)

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        pass  # resolve_tensor handed out a view of dest: the data is already in place


def _box(t: torch.Tensor, offsets: Sequence[int], lengths: Sequence[int]) -> torch.Tensor:
    for dim, (start, length) in enumerate(zip(offsets, lengths)):
        t = t.narrow(dim, start, length)
    return t


class DistCheckpointReader:
    """Tensor metadata and slices of a megatron-core distributed checkpoint directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        config_path = self.path / "metadata.json"
        try:
            backend = json.loads(config_path.read_text()).get("sharded_backend")
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{config_path}: not a megatron distributed checkpoint ({e})"
                                  ) from None
        if backend != SUPPORTED_BACKEND:
            raise CheckpointError(f"{config_path}: sharded_backend={backend!r}; only "
                                  f"{SUPPORTED_BACKEND!r} checkpoints can be read")
        # Each read() is a torch.distributed.checkpoint load, which asks for the metadata again.
        self._reader = CachedMetadataFileSystemReader(str(self.path))
        metadata = self._reader.read_metadata()
        self._storage = metadata.storage_data
        self._records = RecordFiles(self.path)
        self.tensors: dict[str, TensorStorageMetadata] = {
            k: v for k, v in metadata.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._meta(key).size)

    def dtype(self, key: str) -> torch.dtype:
        return self._meta(key).properties.dtype

    def _meta(self, key: str) -> TensorStorageMetadata:
        if key not in self.tensors:
            raise CheckpointError(f"{self.path}: no tensor {key!r} in this checkpoint")
        return self.tensors[key]

    def read(self, requests: Mapping[str, tuple[Sequence[int], Sequence[int]]],
             dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """{key: (offsets, shape)} -> {key: that region of the global tensor}, freshly allocated
        in the stored dtype (or dtype)."""
        dests = {k: (offsets, torch.empty(tuple(shape), dtype=dtype or self.dtype(k)))
                 for k, (offsets, shape) in requests.items()}
        self.read_into(dests)
        return {k: d for k, (_, d) in dests.items()}

    def read_into(self, requests: Mapping[str, tuple[Sequence[int], torch.Tensor]]) -> None:
        """{key: (offsets, dest)}: fill each dest (any dtype; cast on copy) with the region of
        the global tensor at offsets of dest's shape."""
        for key, (offsets, dest) in requests.items():
            stored = self.shape(key)
            if len(offsets) != len(stored) or dest.dim() != len(stored) or any(
                    o < 0 or o + s > n for o, s, n in zip(offsets, dest.shape, stored)):
                raise CheckpointError(f"{self.path}: region offsets {list(offsets)} shape "
                                      f"{list(dest.shape)} is outside {key} {list(stored)}")
        slow = {}
        for key, (offsets, dest) in requests.items():
            chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=dest.shape)
            items = create_read_items_for_chunk_list(key, self._meta(key), [chunk])
            layouts = [self._layout(key, item) for item in items]
            if any(lay is None for lay in layouts):
                slow[key] = (tuple(offsets), dest)
                continue
            for item, lay in zip(items, layouts):
                self._records.copy_box(lay, item.storage_offsets, item.lengths,
                                       _box(dest, item.dest_offsets, item.lengths))
        if slow:  # no_dist: this process reads alone, whatever process groups exist.
            dcp_load({k: d for k, (_, d) in slow.items()}, storage_reader=self._reader,
                     planner=_SlicePlanner(slow), no_dist=True)

    def _layout(self, key: str, item: ReadItem):
        """Where the stored chunk that item reads from lies in its file (None: use torch's
        reader)."""
        meta = self._meta(key)
        offsets = tuple(item.storage_index.offset)
        sizes = next((tuple(c.sizes) for c in meta.chunks if tuple(c.offsets) == offsets), None)
        info = self._storage.get(item.storage_index)
        if sizes is None or info is None:
            return None
        return self._records.layout(info, sizes, meta.properties.dtype)

    def read_layer(self, keys: Sequence[str], layer: int) -> dict[str, torch.Tensor]:
        """Layer `layer` of each stacked layer tensor in keys (without the layer axis)."""
        got = self.read({k: ((layer,) + (0,) * (len(self.shape(k)) - 1), (1,) + self.shape(k)[1:])
                         for k in keys})
        return {k: t[0] for k, t in got.items()}

    def read_whole(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.read({k: ((0,) * len(self.shape(k)), self.shape(k)) for k in keys})

    def nbytes(self, key: str) -> int:
        return math.prod(self.shape(key)) * self.dtype(key).itemsize
