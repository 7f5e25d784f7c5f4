"""Bad inputs to preprocessing and bad datasets given to a run: each refused with a non-zero exit,
no traceback, the file or field named, and nothing left that looks like a dataset."""
from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import struct

import pytest

from tests.faults.refusals import assert_refused, cli, files_at, snapshot
from tests.unit.preprocess_corpus import write_jsonl

GOOD = [{"text": f"good document {i}", "lang": "en"} for i in range(5)]


@pytest.fixture
def preprocess(capsys, caplog):
    from tools import preprocess_data

    caplog.set_level(logging.INFO)
    return lambda *argv: cli(preprocess_data.main, [*argv, "--no-progress"], capsys, caplog)


def _bad_line_file(tmp_path, name: str, line: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in GOOD) + line + b"\n")
    return str(path)


@pytest.mark.parametrize("line,reason", [
    (b'{"text": "caf\xe9 latte"}', "invalid_utf8"),
    (b'["a", "top-level", "list"]', "malformed_json"),
    (b'{"body": "no text key here"}', "missing_key"),
])
def test_bad_records_fail_the_run_naming_file_line_and_reason(preprocess, tmp_path, line, reason):
    path = _bad_line_file(tmp_path, "in.jsonl", line)
    prefix = str(tmp_path / "out" / "ds")
    code, text = preprocess("--input", path, "--output-prefix", prefix, "--merge")
    assert_refused(code, text, path, reason, "rejects.jsonl", exit_code=3)
    assert files_at(prefix) == []  # nothing that looks like a dataset
    [reject] = [json.loads(r) for r in open(prefix + ".rejects.jsonl")]
    assert (reject["file"], reject["line"], reject["reason"]) == (path, len(GOOD) + 1, reason)


def test_missing_input_file_and_directory_input(preprocess, tmp_path):
    out = str(tmp_path / "out" / "ds")
    code, text = preprocess("--input", str(tmp_path / "nope.jsonl"), "--output-prefix", out)
    assert_refused(code, text, "nope.jsonl", "matches no file", exit_code=2)
    (tmp_path / "raw").mkdir()
    code, text = preprocess("--input", str(tmp_path / "raw"), "--output-prefix", out)
    assert_refused(code, text, f"{tmp_path / 'raw'}' is a directory", "glob",
                   f"'{tmp_path / 'raw' / '*.jsonl'}'", exit_code=2)
    assert not os.path.exists(tmp_path / "out" / "ds.shards")


def test_workers_0_is_refused(preprocess, tmp_path):
    path = write_jsonl(str(tmp_path / "in.jsonl"), GOOD)
    code, text = preprocess("--input", path, "--output-prefix", str(tmp_path / "ds"),
                            "--workers", "0")
    assert_refused(code, text, "workers=0: must be >= 1", exit_code=2)


def _truncated_gz(tmp_path) -> tuple[str, int]:
    records = [{"text": f"document number {i} " * 20, "lang": "en"} for i in range(400)]
    whole = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records), mtime=0)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    return str(path), len(records)


def test_truncated_gz_is_an_error_unless_accepted_then_the_loss_is_reported(preprocess, tmp_path):
    path, n = _truncated_gz(tmp_path)
    good = write_jsonl(str(tmp_path / "good.jsonl"), GOOD)
    prefix = str(tmp_path / "out" / "ds")
    code, text = preprocess("--input", good, path, "--output-prefix", prefix, "--merge")
    assert_refused(code, text, path, "truncated_input after line", "--accept-truncated",
                   exit_code=2)
    assert files_at(prefix) == []
    code, text = preprocess("--input", good, path, "--output-prefix", prefix, "--merge",
                            "--accept-truncated")
    assert code == 0, text[-2000:]
    assert "accepted (--accept-truncated)" in text and "lost at least 1 lines" in text
    from elama.data.manifest import read_manifest

    manifest = read_manifest(prefix)
    [cut] = [i for i in manifest["inputs"] if i["path"] == path]
    assert 0 < cut["documents_written"] < n
    assert cut["documents_rejected_by_reason"] == {"truncated_input": 1}
    [reject] = [json.loads(r) for r in open(prefix + ".rejects.jsonl")]
    assert reject["file"] == path and "bytes" in reject["detail"]


def test_a_failed_rerun_leaves_nothing_that_looks_complete(preprocess, tmp_path):
    good = write_jsonl(str(tmp_path / "good.jsonl"), GOOD)
    prefix = str(tmp_path / "out" / "ds")
    assert preprocess("--input", good, "--output-prefix", prefix, "--merge")[0] == 0
    assert files_at(prefix) == [".bin", ".idx", ".manifest.json"]
    bad = _bad_line_file(tmp_path, "bad.jsonl", b"not json")  # 1 of 6 rejected: too many
    code, text = preprocess("--input", good, bad, "--output-prefix", prefix, "--merge")
    assert_refused(code, text, bad, exit_code=3)
    assert files_at(prefix) == []  # the old .bin/.idx would read as the new dataset


# ---- datasets given to a run: `--check`, tools/data_stats.py -----------------------------------
@pytest.fixture
def check(capsys, caplog, tmp_path):
    from elama import train

    caplog.set_level(logging.INFO)

    def run(*overrides):
        return cli(train.main, ["--check", "model=tiny", "data.seq_len_tokens=32",
                                f"checkpoint.run_dir={tmp_path / 'run'}", *overrides],
                   capsys, caplog)
    return run


@pytest.fixture
def stats(capsys, caplog):
    from tools import data_stats

    return lambda *argv: cli(data_stats.main, argv, capsys, caplog)


def _blend(prefix) -> str:
    return f"data.train_blend=[{{prefix:{prefix},weight:1}}]"


def _copy(dataset, dest) -> str:
    for suffix in (".bin", ".idx", ".manifest.json"):
        shutil.copy(dataset + suffix, dest + suffix)
    return dest


def test_a_good_dataset_passes(dataset, check, stats):
    assert check(_blend(dataset))[0] == 0
    assert stats(dataset)[0] == 0


def test_missing_prefix(check, tmp_path):
    code, text = check(_blend(tmp_path / "missing"))
    assert_refused(code, text, f"{tmp_path / 'missing'}.manifest.json: no such manifest",
                   "data.train_blend[0].prefix", exit_code=2)


def test_truncated_bin(dataset, check, stats, tmp_path):
    copy = _copy(dataset, str(tmp_path / "cut"))
    size = os.path.getsize(copy + ".bin")
    os.truncate(copy + ".bin", size // 2)
    for code, text in (check(_blend(copy)), stats(copy)):
        assert_refused(code, text, f"{copy}.bin has {size // 2} bytes", exit_code=2)


def test_tokenizer_hash_mismatch(dataset, check, tmp_path):
    copy = _copy(dataset, str(tmp_path / "other"))
    manifest = json.load(open(copy + ".manifest.json"))
    manifest["tokenizer"]["sha256"] = "0" * 64
    json.dump(manifest, open(copy + ".manifest.json", "w"))
    code, text = check(_blend(copy))
    assert_refused(code, text, copy, "was tokenized with", "data.tokenizer_path", exit_code=2)


def test_garbage_idx(dataset, check, stats, tmp_path):
    copy = _copy(dataset, str(tmp_path / "garbage"))
    size = os.path.getsize(copy + ".idx")
    with open(copy + ".idx", "wb") as f:
        f.write(os.urandom(size))
    for code, text in (check(_blend(copy)), stats(copy)):
        assert_refused(code, text, f"{copy}.idx: not a megatron-core index", exit_code=2)


def test_foreign_idx_with_a_valid_header(dataset, check, stats, tmp_path):
    """Same size and counts, two document lengths moved by one token: documents misaligned."""
    copy = _copy(dataset, str(tmp_path / "foreign"))
    data = bytearray(open(copy + ".idx", "rb").read())
    first, second = struct.unpack_from("<ii", data, 34)  # after the 34-byte header
    struct.pack_into("<ii", data, 34, first + 1, second - 1)
    open(copy + ".idx", "wb").write(bytes(data))
    for code, text in (check(_blend(copy)), stats(copy)):
        assert_refused(code, text, f"{copy}.idx content differs from the manifest's idx_sha256",
                       "re-tokenize", exit_code=2)
