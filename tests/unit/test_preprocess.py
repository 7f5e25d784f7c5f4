"""Offline tokenization end to end: exact ids read back through megatron-core's IndexedDataset and
GPTDataset, every reject reason, counts that add up, and the reject-fraction gate."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megatron.core.datasets.utils import Split

from elama.data.indexed import DocumentBuilder, IndexFormatError, read_index
from elama.data.manifest import ManifestError, read_manifest
from elama.data.readers import Unit, chunk_offsets, iter_line_blocks, plan_units
from elama.data.tokenize import TooManyRejectsError, tokenize_files
from elama.tokenizer import load_tokenizer
from tests.unit.preprocess_corpus import write_bad_corpus, write_tricky_corpus
from tools import preprocess_data


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def tricky(tmp_path_factory):
    root = tmp_path_factory.mktemp("tricky")
    paths, expected = write_tricky_corpus(str(root / "in"))
    prefix = str(root / "out" / "tricky")
    # 40 kB units split a.jsonl around its 31k- and 100k-character documents
    manifest = tokenize_files(paths, prefix, language_key="lang", merge=True,
                              chunk_bytes=40_000, max_reject_fraction=0.1, progress=False)
    return prefix, manifest, expected


def _expected_ids(tok, text):
    return [tok.bos_id, *tok.model.encode_ordinary(text), tok.eos_id]


def test_ids_equal_tiktoken_through_indexed_dataset(tok, tricky):
    prefix, manifest, expected = tricky
    ds = IndexedDataset(prefix)
    assert len(ds) == len(expected) == manifest["documents_written"]
    assert ds.index.dtype == np.int32
    assert ds.document_indices.tolist() == list(range(len(expected) + 1))
    for i, text in enumerate(expected):
        assert ds[i].tolist() == _expected_ids(tok, text), f"document {i}: {text[:40]!r}"
    assert manifest["documents_read"] == 44 and manifest["documents_rejected_by_reason"] == \
        {"empty_text": 4}
    assert manifest["tokens_written"] == int(ds.sequence_lengths.sum())
    assert sum(manifest["tokens_by_language"].values()) == manifest["tokens_written"]
    assert manifest["documents_by_language"]["zh"] == 4
    assert read_manifest(prefix) == manifest


def test_gpt_dataset_reads_output(tok, tricky, tmp_path):
    prefix, manifest, _ = tricky
    config = GPTDatasetConfig(random_seed=1234, sequence_length=64, split="1,0,0",
                              tokenizer=tok.megatron_adapter(), reset_position_ids=False,
                              reset_attention_mask=False, eod_mask_loss=False,
                              path_to_cache=str(tmp_path / "cache"))
    indexed = IndexedDataset(prefix)
    gpt = GPTDataset(indexed, prefix, np.arange(len(indexed)), None, Split.train, config)
    # GPTDataset's epoch: documents in document_index order, cut into 64+1 token windows
    stream = np.concatenate([indexed[d] for d in gpt.document_index])
    starts = np.concatenate([[0], np.cumsum([len(indexed[d]) for d in gpt.document_index])])
    assert len(gpt) == (manifest["tokens_written"] - 1) // 64
    for idx in range(len(gpt)):
        j = gpt.shuffle_index[idx]
        (doc_a, off_a), (doc_b, off_b) = gpt.sample_index[j], gpt.sample_index[j + 1]
        window = stream[starts[doc_a] + off_a: starts[doc_b] + off_b + 1]
        sample = gpt[idx]
        assert torch.equal(sample["tokens"], torch.from_numpy(window[:-1]).long())
        assert torch.equal(sample["labels"], torch.from_numpy(window[1:]).long())


def test_bad_inputs_each_rejected_with_reason(tmp_path, tok):
    bad = write_bad_corpus(str(tmp_path / "in"))
    prefix = str(tmp_path / "out" / "bad")
    m = tokenize_files(bad["paths"], prefix, max_reject_fraction=1.0, merge=True, progress=False,
                       accept_truncated=True)  # without it, the cut files fail (tests/faults)
    with open(prefix + ".rejects.jsonl") as f:
        rejects = [json.loads(line) for line in f]
    bad_path, gz, zst = bad["paths"]
    assert [(r["file"], r["line"], r["reason"]) for r in rejects if r["file"] == bad_path] == \
        bad["rejects"]
    by_file = {i["path"]: i for i in m["inputs"]}
    for path in (gz, zst):
        (cut,) = [r for r in rejects if r["file"] == path]
        kept = by_file[path]["documents_written"]
        assert cut["reason"] == "truncated_input" and cut["line"] == kept + 1
        assert 0 < kept < len(bad["cut_texts"])
    # what was kept is exactly the documents before the break, in order
    ds = IndexedDataset(prefix)
    texts = bad["good_texts"] + bad["cut_texts"][:by_file[gz]["documents_written"]] + \
        bad["cut_texts"][:by_file[zst]["documents_written"]]
    assert len(ds) == len(texts)
    for i in (0, 1, 2, len(texts) - 1):
        assert ds[i].tolist() == _expected_ids(tok, texts[i])
    for entry in [m, *m["inputs"]]:
        assert entry["documents_read"] == entry["documents_written"] + entry["documents_rejected"]
        assert sum(entry["documents_rejected_by_reason"].values()) == entry["documents_rejected"]
    assert m["documents_rejected"] == len(rejects) == 11


def test_reject_fraction_fails_the_run(tmp_path, capsys):
    bad = write_bad_corpus(str(tmp_path / "in"))
    prefix = str(tmp_path / "out" / "bad")
    with pytest.raises(TooManyRejectsError, match=r"max_reject_fraction=0\.10%.*rejects\.jsonl"):
        tokenize_files(bad["paths"], prefix, max_reject_fraction=0.001, progress=False,
                       accept_truncated=True)
    assert not os.path.exists(prefix + ".manifest.json")
    assert sum(1 for _ in open(prefix + ".rejects.jsonl")) == 11
    rc = preprocess_data.main(["--input", *bad["paths"], "--output-prefix", prefix,
                               "--max-reject-fraction", "0.001", "--no-progress",
                               "--accept-truncated"])
    assert rc == 3 and "documents rejected" in capsys.readouterr().err
    assert preprocess_data.main(["--input", *bad["paths"], "--output-prefix", prefix,
                                 "--max-reject-fraction", "0.5", "--no-progress",
                                 "--accept-truncated"]) == 0
    assert read_manifest(prefix)["documents_rejected"] == 11


def test_cli_reports_bad_arguments(tmp_path, capsys):
    assert preprocess_data.main(["--input", str(tmp_path / "none*.jsonl"), "--output-prefix",
                                 str(tmp_path / "x"), "--no-progress"]) == 2
    assert "matches no file" in capsys.readouterr().err
    (tmp_path / "a.csv").write_text("x\n")
    assert preprocess_data.main(["--input", str(tmp_path / "a.csv"), "--output-prefix",
                                 str(tmp_path / "x"), "--no-progress"]) == 2
    assert "unsupported input" in capsys.readouterr().err


def test_document_builder_matches_megatron_per_document_add(tmp_path):
    """elama writes the format without importing megatron; megatron's builder is the reference,
    for batched adds and for concatenation (add_index) alike."""
    docs = [np.array(d, dtype=np.int32) for d in ([1, 2, 3], [128000, 7], [5] * 10, [9])]
    ours = DocumentBuilder(str(tmp_path / "ours.bin"), dtype=np.int32)
    ours.add_documents(b"".join(d.tobytes() for d in docs[:3]), [3, 2, 10])
    ours.add_documents(docs[3].tobytes(), [1])
    ours.finalize(str(tmp_path / "ours.idx"))
    ref = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=np.int32)
    for d in docs:
        ref.add_document(torch.from_numpy(d), [len(d)])
    ref.finalize(str(tmp_path / "ref.idx"))
    _assert_same_files(tmp_path / "ours", tmp_path / "ref")
    both, ref_both = (DocumentBuilder(str(tmp_path / "both.bin")),
                      IndexedDatasetBuilder(str(tmp_path / "ref_both.bin"), dtype=np.int32))
    for builder in (both, ref_both):
        builder.add_index(str(tmp_path / "ref"))
        builder.add_index(str(tmp_path / "ours"))
    both.finalize(str(tmp_path / "both.idx"))
    ref_both.finalize(str(tmp_path / "ref_both.idx"))
    _assert_same_files(tmp_path / "both", tmp_path / "ref_both")
    assert [list(d) for d in IndexedDataset(str(tmp_path / "both"))] == [list(d) for d in docs] * 2


def _assert_same_files(ours, ref):
    for suffix in (".bin", ".idx"):
        assert Path(f"{ours}{suffix}").read_bytes() == Path(f"{ref}{suffix}").read_bytes(), suffix


def test_index_reader_names_a_bad_file(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"NOTANIDX" + bytes(40))
    with pytest.raises(IndexFormatError, match="bad.idx: not a megatron"):
        read_index(str(bad))
    good = tmp_path / "good"
    builder = DocumentBuilder(str(good) + ".bin")
    builder.add_documents(np.arange(6, dtype=np.int32).tobytes(), [2, 4])
    builder.finalize(str(good) + ".idx")
    (tmp_path / "cut.idx").write_bytes((tmp_path / "good.idx").read_bytes()[:-4])
    with pytest.raises(IndexFormatError, match="cut.idx: truncated"):
        read_index(str(tmp_path / "cut.idx"))


@pytest.mark.parametrize("taper", [False, True])
@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 10_000])
def test_jsonl_units_cover_every_line_once(tmp_path, chunk_bytes, taper):
    rng = np.random.default_rng(0)
    lines = [b"x" * int(n) for n in rng.integers(0, 200, size=300)]
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\n".join(lines))  # no final newline: the last line still counts
    got = []
    for unit in plan_units(str(path), chunk_bytes, taper):
        for block in iter_line_blocks(unit):
            got += block[0]
    assert got == lines
    assert list(iter_line_blocks(Unit(str(path), "jsonl", 0, 0, 0))) == []


def test_tapered_chunks_shrink_toward_the_end():
    assert chunk_offsets(1000, 100, taper=False) == list(range(100, 1000, 100))
    offsets = chunk_offsets(1000, 100, taper=True)
    sizes = [b - a for a, b in zip([0, *offsets], [*offsets, 1000])]
    assert sizes[:8] == [100] * 8 and sizes[8:] == [100, 50, 25, 12, 13]
    assert chunk_offsets(90, 100, taper=True) == []  # a file within one chunk stays whole


def test_read_manifest_errors_name_the_file(tricky, tmp_path):
    prefix, manifest, _ = tricky
    with pytest.raises(ManifestError, match=r"nope\.manifest\.json: no such manifest"):
        read_manifest(str(tmp_path / "nope"))
    copy = str(tmp_path / "copy")
    for suffix in (".bin", ".idx"):
        os.symlink(prefix + suffix, copy + suffix)
    broken = dict(manifest, tokens_written=manifest["tokens_written"] + 1,
                  documents_read=manifest["documents_read"] + 1)
    with open(copy + ".manifest.json", "w") as f:
        json.dump(broken, f)
    with pytest.raises(ManifestError) as e:
        read_manifest(copy)
    assert "copy.manifest.json" in str(e.value) and "copy.bin has" in str(e.value)
    assert "documents_read=" in str(e.value)
    with open(copy + ".manifest.json", "w") as f:
        f.write("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(copy)


def test_fixed_language_and_no_bos_eos(tmp_path, tok):
    paths, expected = write_tricky_corpus(str(tmp_path / "in"))
    prefix = str(tmp_path / "out" / "de")
    m = tokenize_files(paths[:1], prefix, language="de", add_bos=False, add_eos=False,
                       merge=True, max_reject_fraction=0.1, progress=False)
    assert m["tokens_by_language"] == {"de": m["tokens_written"]}
    ds = IndexedDataset(prefix)  # held: its arrays are views of an mmap closed on deletion
    assert ds[0].tolist() == tok.model.encode_ordinary(expected[0])


def test_several_text_keys_joined(tmp_path, tok):
    from tests.unit.preprocess_corpus import write_jsonl

    path = write_jsonl(str(tmp_path / "l.jsonl"), [
        {"title": "Rain jacket", "aspects": "Colour: red", "description": "Waterproof."},
        {"title": "No aspects", "description": "missing one key"}])
    prefix = str(tmp_path / "listings")
    m = tokenize_files([path], prefix, text_keys=["title", "aspects", "description"],
                       text_separator=" | ", merge=True, max_reject_fraction=0.5, progress=False)
    assert m["documents_rejected_by_reason"] == {"missing_key": 1}
    ds = IndexedDataset(prefix)
    assert ds[0].tolist() == _expected_ids(tok, "Rain jacket | Colour: red | Waterproof.")


def test_parquet_rows_rejected_like_json_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    nokey, mixed = str(tmp_path / "nokey.parquet"), str(tmp_path / "mixed.parquet")
    pq.write_table(pa.Table.from_pylist([{"body": "x"}, {"body": "y"}]), nokey)
    pq.write_table(pa.Table.from_pylist([{"text": "fine"}, {"text": None}, {"text": " "}]), mixed)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    prefix = str(tmp_path / "pq")
    m = tokenize_files([nokey, mixed, str(tmp_path / "broken.parquet")], prefix,
                       max_reject_fraction=1.0, merge=True, progress=False, accept_truncated=True)
    with open(prefix + ".rejects.jsonl") as f:
        got = [(os.path.basename(r["file"]), r["line"], r["reason"]) for r in map(json.loads, f)]
    assert got == [("nokey.parquet", 1, "missing_key"), ("nokey.parquet", 2, "missing_key"),
                   ("mixed.parquet", 2, "non_string_key"), ("mixed.parquet", 3, "empty_text"),
                   ("broken.parquet", 1, "truncated_input")]
    assert (m["documents_read"], m["documents_written"]) == (6, 1)
