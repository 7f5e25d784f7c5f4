"""The converters' direct checkpoint I/O: records read straight from .distcp files (and the ones
that must go through torch's reader), reused buffers, and the import writer's guard against
filling a buffer before its previous chunk was written."""
import io
import json

import pytest
import torch
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint import save as dcp_save

from elama.convert.buffers import BufferPool
from elama.convert.dist_reader import DistCheckpointReader
from elama.convert.dist_writer import ChunkWrite, _LazySavePlanner, _TrackedFileSystem


def _checkpoint(tmp_path, tensors: dict[str, torch.Tensor], crc32: bool = True):
    from torch.utils.serialization import config as serialization

    directory = tmp_path / "model"
    with serialization.patch({"save.compute_crc32": crc32}):  # elama's import writes without
        dcp_save(tensors, storage_writer=FileSystemWriter(str(directory),
                                                          single_file_per_rank=True), no_dist=True)
    (directory / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist",
                                                          "sharded_backend_version": 1}))
    return DistCheckpointReader(directory)


def _stored_layouts(reader, key):
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    meta = reader._meta(key)
    return [reader._layout(key, item) for chunk in meta.chunks
            for item in create_read_items_for_chunk_list(key, meta, [chunk])]


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 10, generator=g)
    return {"w": base.to(torch.bfloat16), "norm": torch.randn(10, generator=g),
            # A transposed view over an exactly sized storage: torch saves it with its strides.
            "t": torch.randn(10, 6, generator=g).t(), "ids": torch.arange(12).reshape(3, 4)}


@pytest.mark.parametrize("crc32", [True, False])
def test_plain_records_are_read_directly_and_strided_ones_through_torch(tmp_path, tensors, crc32):
    reader = _checkpoint(tmp_path, tensors, crc32)
    for key in ("w", "norm", "ids"):
        assert all(lay is not None for lay in _stored_layouts(reader, key)), key
    assert _stored_layouts(reader, "t") == [None]
    got = reader.read_whole(list(tensors))
    for key, value in tensors.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def test_regions_casts_and_reuse_of_destinations(tmp_path, tensors):
    reader = _checkpoint(tmp_path, tensors)
    # Columns 3..7: not contiguous in the record (copied through the mapped file).
    cols = reader.read({"w": ((0, 3), (6, 4)), "t": ((2, 1), (3, 5))})
    assert torch.equal(cols["w"], tensors["w"][:, 3:7])
    assert torch.equal(cols["t"], tensors["t"][2:5, 1:6])
    rows = reader.read({"w": ((2, 0), (3, 10))}, dtype=torch.float32)
    assert rows["w"].dtype == torch.float32
    assert torch.equal(rows["w"], tensors["w"][2:5].float())
    dest = torch.full((2, 4), -1, dtype=torch.int64)
    reader.read_into({"ids": ((1, 0), dest)})
    assert torch.equal(dest, tensors["ids"][1:3])
    with pytest.raises(Exception, match="outside ids"):
        reader.read_into({"ids": ((2, 0), dest)})


def test_buffer_pool_reuses_exactly_sized_memory():
    pool = BufferPool()
    a = pool.take((4, 8), torch.bfloat16)
    assert a.untyped_storage().nbytes() == a.nbytes  # torch.save writes the whole storage
    b = pool.take((8, 4), torch.bfloat16)  # same bytes, same slot: the same memory
    assert b.data_ptr() == a.data_ptr()
    c = pool.take((4, 8), torch.bfloat16, slot=1)
    assert c.data_ptr() != a.data_ptr() and pool.nbytes == 2 * a.nbytes


def test_import_writer_refuses_to_refill_a_buffer_not_yet_written():
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import WriteItem, WriteItemType

    chunks = [ChunkWrite(k, (2, 4), (0, 0), (2, 4), torch.float32, lambda out: out.fill_(1))
              for k in ("a", "b")]
    fs = _TrackedFileSystem()
    planner = _LazySavePlanner(chunks, {}, fs)
    items = {c.key: WriteItem(index=MetadataIndex(c.key, torch.Size(c.offsets)),
                              type=WriteItemType.SHARD) for c in chunks}
    fs.stream = io.BytesIO()
    first = planner.resolve_data(items["a"])
    assert torch.equal(first, torch.ones(2, 4))
    torch.save(first, fs.stream)  # what torch's writer does before it asks for the next chunk
    planner.resolve_data(items["b"])
    with pytest.raises(RuntimeError, match="before writing the previous one"):
        planner.resolve_data(items["a"])


def test_import_writer_fills_the_next_chunk_ahead_and_any_order_still_gets_its_own_data():
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import WriteItem, WriteItemType

    filled = []

    def fill_with(value):
        return lambda out: (filled.append(value), out.fill_(value))

    chunks = [ChunkWrite(k, (2, 4), (0, 0), (2, 4), torch.float32, fill_with(v))
              for k, v in (("a", 1), ("b", 2), ("c", 3))]
    fs = _TrackedFileSystem()
    planner = _LazySavePlanner(chunks, {}, fs)
    items = {c.key: WriteItem(index=MetadataIndex(c.key, torch.Size(c.offsets)),
                              type=WriteItemType.SHARD) for c in chunks}
    fs.stream = io.BytesIO()
    try:
        for key, value in (("a", 1), ("b", 2), ("c", 3), ("a", 1), ("b", 2)):
            tensor = planner.resolve_data(items[key])
            assert torch.equal(tensor, torch.full((2, 4), float(value))), key
            torch.save(tensor, fs.stream)
    finally:
        planner.close()
    # in plan order each next chunk is filled ahead (b after a, c after b); the second a is out of
    # order, filled when asked for (in c's slot-0 buffer, written by then); b after it was filled
    # ahead, and so was c after b, though nobody asks for it (close() waits for that fill)
    assert filled == [1, 2, 3, 1, 2, 3]
