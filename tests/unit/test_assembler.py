"""A shard's parts appended as they complete in order (elama.data.shards.Assembler): the result
equals joining them at the end, whatever order the parts arrive in, and nothing is committed
before every part is in."""
import os

import numpy as np
import pytest

from elama.data.indexed import DocumentBuilder, read_index
from elama.data.shards import Assembler, concat_datasets


def _part(prefix: str, docs: list[list[int]]) -> str:
    builder = DocumentBuilder(prefix + ".bin")
    builder.add_documents(np.asarray([t for d in docs for t in d], dtype=np.int32).tobytes(),
                          [len(d) for d in docs])
    builder.finalize(prefix + ".idx")
    return prefix


def test_parts_arriving_out_of_order_join_in_unit_order(tmp_path):
    docs = [[[1, 2, 3], [4]], [[5, 6]], [[7], [8, 9], [10]]]
    parts = [_part(str(tmp_path / f"p{k}"), d) for k, d in enumerate(docs)]
    assembler = Assembler(parts, str(tmp_path / "streamed"))
    assembler.advance([None, None, {"done": 1}])  # the last part first: nothing can be appended
    assert assembler.appended == 0
    assembler.advance([{"done": 1}, None, {"done": 1}])
    assert assembler.appended == 1
    with pytest.raises(RuntimeError, match="2 source"):  # never half a shard under its name
        assembler.commit()
    assert not os.path.exists(tmp_path / "streamed.bin")
    assembler.advance([{"done": 1}] * 3)
    assembler.commit()
    concat_datasets(parts, str(tmp_path / "joined"), move=False)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"streamed{ext}").read_bytes() == (tmp_path / f"joined{ext}").read_bytes()
    tokens = np.fromfile(tmp_path / "streamed.bin", dtype=np.int32)
    assert tokens.tolist() == list(range(1, 11))
    _, lengths, documents = read_index(str(tmp_path / "streamed.idx"))
    assert lengths.tolist() == [3, 1, 2, 1, 2, 1] and documents.tolist() == list(range(7))
