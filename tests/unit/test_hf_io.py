"""Streamed HF safetensors I/O: the reader against transformers' own files, the sharded writer
(buffered and planned) against safetensors' loader, refusals of bad directories, staged outputs."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from elama.convert.hf import (INDEX_FILE, SINGLE_FILE, CheckpointError, HFCheckpointReader,
                              ShardedSafetensorsWriter, copy_side_files, staged_output_dir)
from tests.hf_fixtures import make_tiny_hf_llama


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return make_tiny_hf_llama(tmp_path_factory.mktemp("sharded"), seed=3, dtype=torch.bfloat16,
                              max_shard_size="100KB")


def _load_dir(path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF directory through safetensors' own loader (the reference)."""
    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}


def _mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.f32": torch.randn(33, 7, generator=g),
        "b.bf16": torch.randn(100, 10, generator=g).to(torch.bfloat16),
        "c.f16": torch.randn(5, generator=g).to(torch.float16),
        "d.i64": torch.arange(11),
        "e.scalar": torch.tensor(2.5),
        "f.empty": torch.zeros(0, 4),
        "g.big": torch.randn(600, generator=g),  # 2400 bytes: more than one shard's limit
        "h.bool": torch.tensor([True, False, True]),
    }


def test_reader_reads_transformers_checkpoint_bitwise(sharded):
    reference = _load_dir(sharded)
    index = json.loads((sharded / INDEX_FILE).read_text())
    with HFCheckpointReader(sharded) as r:
        assert r.config["model_type"] == "llama" and r.config["rope_scaling"]["rope_type"] == "llama3"
        assert sorted(r.names()) == sorted(reference) == sorted(index["weight_map"])
        assert len({r.meta(n).shard for n in r.names()}) > 1
        # names() walks the files in order, so a streamed pass reads each shard sequentially.
        places = [(r.meta(n).shard, r.meta(n).data_offset) for n in r.names()]
        assert places == sorted(places)
        for name, want in reference.items():
            meta = r.meta(name)
            assert (meta.shape, meta.dtype, meta.shard) == (tuple(want.shape), want.dtype,
                                                            index["weight_map"][name])
            assert torch.equal(r.get(name), want)
        emb = reference["model.embed_tokens.weight"]
        assert torch.equal(r.get_rows("model.embed_tokens.weight", 5, 17), emb[5:17])
        buf = torch.full((4, emb.shape[1]), 7.0, dtype=torch.bfloat16)
        assert torch.equal(r.read_rows_into("model.embed_tokens.weight", 268, buf), emb[268:272])
        with pytest.raises(CheckpointError, match=r"rows \[270, 274\) of tensor model.embed_tokens"):
            r.read_rows_into("model.embed_tokens.weight", 270, buf)
        with pytest.raises(CheckpointError, match="no tensor named lm_head.bias"):
            r.meta("lm_head.bias")
        assert r.total_bytes == sum(t.numel() * t.element_size() for t in reference.values())


def test_reader_single_file(tmp_path):
    path = make_tiny_hf_llama(tmp_path / "single", seed=4)
    assert (path / SINGLE_FILE).is_file() and not (path / INDEX_FILE).exists()
    reference = _load_dir(path)
    with HFCheckpointReader(path) as r:
        assert {r.meta(n).shard for n in r.names()} == {SINGLE_FILE}
        assert all(torch.equal(r.get(n), t) for n, t in reference.items())


def test_buffered_writer_shards_index_and_roundtrip(tmp_path):
    tensors = _mixed_tensors()
    with ShardedSafetensorsWriter(tmp_path, max_shard_bytes=2000) as w:
        for name, t in tensors.items():
            w.add(name, t)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    count = len(shards)
    assert count > 2
    assert shards == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    assert sorted(index["weight_map"]) == sorted(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    loaded = _load_dir(tmp_path)
    assert all(torch.equal(loaded[n], t) and loaded[n].dtype == t.dtype for n, t in tensors.items())
    big_shard = index["weight_map"]["g.big"]
    assert [n for n, s in index["weight_map"].items() if s == big_shard] == ["g.big"]
    assert not list(tmp_path.glob(".tmp*"))
    with HFCheckpointReader(_with_config(tmp_path)) as r:
        assert all(torch.equal(r.get(n), t) for n, t in tensors.items())
        # Each tensor's data starts at a multiple of its element size (zero-copy readers need it).
        assert all(r.meta(n).data_offset % t.element_size() == 0 for n, t in tensors.items())


def _with_config(path):
    (path / "config.json").write_text("{}")
    return path


def test_planned_writer_streams_rows_and_checks_completeness(tmp_path):
    tensors = _mixed_tensors()
    out = tmp_path / "planned"
    w = ShardedSafetensorsWriter(out, max_shard_bytes=2000)
    w.plan((n, t.shape, t.dtype) for n, t in tensors.items())
    for name, t in tensors.items():
        if t.dim() == 0 or len(t) < 3:
            w.add(name, t)
            continue
        for r0 in range(0, len(t), 3):  # rows in blocks of 3, as a streamed merge writes them
            w.add_rows(name, r0, t[r0:r0 + 3])
    w.close()
    loaded = _load_dir(out)
    assert all(torch.equal(loaded[n], t) for n, t in tensors.items())

    w = ShardedSafetensorsWriter(tmp_path / "partial", max_shard_bytes=2000)
    w.plan((n, t.shape, t.dtype) for n, t in tensors.items())
    w.add("a.f32", tensors["a.f32"])
    with pytest.raises(CheckpointError, match="rows must come in order: expected row 0, got 3"):
        w.add_rows("b.bf16", 3, tensors["b.bf16"][3:6])
    with pytest.raises(CheckpointError, match="do not fit"):
        w.add_rows("b.bf16", 0, tensors["b.bf16"][:3].float())
    with pytest.raises(CheckpointError, match="zzz was not declared"):
        w.add("zzz", torch.zeros(1))
    with pytest.raises(CheckpointError, match=r"6 planned tensor\(s\) incomplete, e.g. \['b.bf16'"):
        w.close()
    assert not list((tmp_path / "partial").iterdir())


def test_writer_single_shard_and_refusals(tmp_path):
    with ShardedSafetensorsWriter(tmp_path / "one") as w:
        w.add("x", torch.ones(3))
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [SINGLE_FILE]
    assert w.close()["weight_map"] == {"x": SINGLE_FILE}
    with pytest.raises(CheckpointError, match="already holds weights"):
        ShardedSafetensorsWriter(tmp_path / "one")
    w = ShardedSafetensorsWriter(tmp_path / "dup")
    w.add("x", torch.ones(3))
    with pytest.raises(CheckpointError, match="tensor x added twice"):
        w.add("x", torch.ones(3))
    with pytest.raises(CheckpointError, match="no tensors were added"):
        ShardedSafetensorsWriter(tmp_path / "empty").close()


def test_reader_refuses_bad_directories(tmp_path, sharded):
    (tmp_path / "noconf").mkdir()
    with pytest.raises(CheckpointError, match=r"noconf/config.json: file not found"):
        HFCheckpointReader(tmp_path / "noconf")
    bad = tmp_path / "badjson"
    bad.mkdir()
    (bad / "config.json").write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(CheckpointError, match=r"badjson/config.json:3: invalid JSON"):
        HFCheckpointReader(bad)
    with pytest.raises(CheckpointError, match="neither model.safetensors.index.json nor"):
        HFCheckpointReader(_with_config(tmp_path / "badjson"))
    broken = tmp_path / "broken"
    broken.mkdir()
    copy_side_files(sharded, broken)
    index = json.loads((sharded / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    for s in shards[1:]:
        (broken / s).write_bytes((sharded / s).read_bytes())
    (broken / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"lists shard {shards[0]}, which is missing"):
        HFCheckpointReader(broken)
    (broken / shards[0]).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}  ")
    with pytest.raises(CheckpointError, match=f"{shards[0]}: not a readable safetensors file"):
        HFCheckpointReader(broken)
    save_file({"stray": torch.zeros(2)}, broken / shards[0])
    with pytest.raises(CheckpointError, match=r"disagrees with .*shard-only tensors \['stray'\]"):
        HFCheckpointReader(broken)


def test_staged_output_dir_never_leaves_partial_output(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_output_dir(final) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []
    with staged_output_dir(final) as tmp:
        (tmp / "v1").write_text("1")
    assert sorted(p.name for p in final.iterdir()) == ["v1"]
    with pytest.raises(CheckpointError, match="output directory exists; pass --force"):
        with staged_output_dir(final):
            pass
    with pytest.raises(RuntimeError):
        with staged_output_dir(final, force=True) as tmp:
            raise RuntimeError("crash")
    assert sorted(p.name for p in final.iterdir()) == ["v1"]  # the old output survives a failure
    with staged_output_dir(final, force=True) as tmp:
        (tmp / "v2").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["v2"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
