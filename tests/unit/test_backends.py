"""Encoder backends: fastokens proven equal to tiktoken (probe set, random adversarial text, whole
datasets byte for byte), a wrong backend refused before anything is written, the memory guard's
recycling, and JSON parsing with orjson giving json's records and errors exactly."""
from __future__ import annotations

import json
import os
import random

import pytest

from elama.data import backends
from elama.data.backends import (BackendError, FastokensEncoder, build_encoder, check_backend,
                                 fastokens_json, probe_texts)
from elama.data.readers import json_loads_line
from elama.data.tokenize import tokenize_files
from elama.tokenizer import load_tokenizer
from tests.unit.preprocess_corpus import write_bad_corpus, write_tricky_corpus
from tools import preprocess_data


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def fast(tok):
    return build_encoder(tok, "fastokens")


def _ids(buf) -> bytes:
    return bytes(memoryview(buf).cast("B"))


def test_fastokens_equals_tiktoken_on_probes_and_random_text(tok, fast):
    assert fast.name == "fastokens" and fast.version == "0.3.5"
    for text in probe_texts():
        assert _ids(fast.encode_to_buffer(text)) == _ids(tok.encode_to_buffer(text)), text[:40]
    # random strings over an alphabet of the pattern's edge cases: spaces of every kind,
    # newlines, apostrophes, digits, letters with and without case, CJK, emoji and joiners
    alphabet = list(" \t\n\r\u00a0\u3000'sStTmMdD0123456789aZé.,!?-_/東京中文한😀\u200d🏽<|>")
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        assert _ids(fast.encode_to_buffer(text)) == _ids(tok.encode_to_buffer(text)), repr(text)
    with pytest.raises(UnicodeEncodeError):  # lone surrogates: rejected as the reference does
        fast.encode_to_buffer("a\ud800b")


class _DropsLastId:
    """A backend that loses the last id of texts with a long whitespace run."""
    name, version = "broken", "0"

    def __init__(self, tok):
        self.tok = tok

    def encode_to_buffer(self, text):
        buf = _ids(self.tok.encode_to_buffer(text))
        return buf[:-4] if " " * 1_000 in text else buf


def test_probe_refuses_a_backend_that_differs(tok):
    with pytest.raises(BackendError, match=r"probe text \d+ .*first difference at id "
                                           r"\d+.*--backend tiktoken"):
        check_backend(_DropsLastId(tok), tok)


def test_probe_refuses_a_damaged_tokenizer_json(tok, tmp_path):
    # the ids of "a" and "b" swapped: a valid tokenizer.json that no longer encodes as Llama 3
    with open(fastokens_json(tok), encoding="utf-8") as f:
        spec = json.load(f)
    vocab = spec["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(BackendError, match="fastokens 0.3.5 encodes probe text"):
        check_backend(FastokensEncoder(tok, str(path)), tok)


def test_damaged_cache_is_rebuilt_and_unwritable_cache_refused(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("ELAMA_CACHE_DIR", str(tmp_path / "cache"))
    target = backends.cache_path(tok)
    os.makedirs(os.path.dirname(target))
    with open(target, "w", encoding="utf-8") as f:
        f.write('{"not": "a tokenizer"}')  # e.g. a truncated copy
    encoder = backends._build_encoder.__wrapped__(tok, "fastokens")
    assert _ids(encoder.encode_to_buffer("Größe 42 東京")) == \
        _ids(tok.encode_to_buffer("Größe 42 東京"))
    with open(target, encoding="utf-8") as f:
        assert json.load(f)["model"]["type"] == "BPE"  # rewritten in place
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("ELAMA_CACHE_DIR", str(blocked))  # a file where a directory must go
    with pytest.raises(BackendError, match="ELAMA_CACHE_DIR to a writable directory"):
        fastokens_json(tok)


def test_recycling_keeps_ids(tok, monkeypatch):
    monkeypatch.setattr(backends, "RSS_CHECK_EVERY_CHARS", 10_000)
    monkeypatch.setattr(backends, "MAX_RSS_GROWTH_BYTES", -1)  # every check recycles
    enc = FastokensEncoder(tok, fastokens_json(tok))
    texts = [f"Größe {i} – 東京 {'x' * 4_000}" for i in range(4)]
    got = [_ids(enc.encode_to_buffer(t)) for t in texts]
    assert enc.recycles == 1 and enc.fallbacks == 0
    assert got == [_ids(tok.encode_to_buffer(t)) for t in texts]


def test_unknown_backend_is_refused_before_reading(tmp_path):
    with pytest.raises(BackendError, match="backend='hf'"):
        tokenize_files([str(tmp_path / "missing.jsonl")], str(tmp_path / "o"), backend="hf")


def _files(prefix: str) -> dict:
    out = {}
    for suffix in (".bin", ".idx", ".rejects.jsonl"):
        with open(prefix + suffix, "rb") as f:
            out[suffix] = f.read()
    with open(prefix + ".manifest.json", encoding="utf-8") as f:
        out["manifest"] = json.load(f)
    return out


def test_outputs_byte_identical_whichever_backend(tmp_path):
    paths, _ = write_tricky_corpus(str(tmp_path / "in"))
    inputs = [*paths, write_bad_corpus(str(tmp_path / "bad"))["paths"][0]]  # every reject
    runs = {}
    for backend, workers in (("tiktoken", 1), ("fastokens", 2)):
        prefix = str(tmp_path / backend / "ds")
        rc = preprocess_data.main(["--input", *inputs, "--output-prefix", prefix, "--merge",
                                   "--language-key", "lang", "--workers", str(workers),
                                   "--chunk-mb", "0.04", "--max-reject-fraction", "0.9",
                                   "--backend", backend, "--no-progress"])
        assert rc == 0
        runs[backend] = _files(prefix)
    ref, got = runs["tiktoken"], runs["fastokens"]
    for suffix in (".bin", ".idx", ".rejects.jsonl"):
        assert got[suffix] == ref[suffix], suffix
    assert len(ref[".bin"]) > 100_000  # the long documents are in it
    assert ref["manifest"].pop("tokenizer_backend") == {"backend": "tiktoken",
                                                        "version": backends._dist_version(
                                                            "tiktoken")}
    assert got["manifest"].pop("tokenizer_backend") == {"backend": "fastokens",
                                                        "version": "0.3.5"}
    assert got["manifest"] == ref["manifest"]


JSON_LINES = [
    b'{"a":1,"a":2}', b'{"t":"\\ud83d\\ude00"}', b'{"t":"\\ud800"}', b'{"x":NaN}',
    b'{"x":1e400}', b'{"x":123456789012345678901234567890}', b'{"x":18446744073709551615}',
    b'{"x":-0.0,"y":5e-324,"z":0.1}', b'{"t":"a\\u0000b"}', b' {"a":1} \r',
    b'\xef\xbb\xbf{"a":1}', b'{"t":"\xff"}', b'[1,2]', b'{"t":"\xed\xa0\x80"}', b"", b"   ",
    b'{"a":[1,{"b":null}],"c":true}', b'{"t":"caf\xc3\xa9 \\" \\\\ \\/"}', b'{"a":1}x',
    b'{"t": "' + b"9" * 25 + b'"}', b'"just a string"', b'{"a":01}',
    b'{"x":-9223372036854775809}', b'{"x":-9223372036854775808}', b'{"x":2e19,"t":"a"}',
    b'{"x":1.5e19}', b'{"text":12345678901234567890123}',
]


def _json_reference(line: bytes):
    try:
        return json.JSONDecoder().decode(line.decode())
    except ValueError as e:
        return (type(e).__name__, str(e))


@pytest.mark.parametrize("line", JSON_LINES)
def test_json_loads_line_is_json(line):
    try:
        got = json_loads_line(line)
    except ValueError as e:
        got = (type(e).__name__, str(e))
    want = _json_reference(line)
    assert repr(got) == repr(want)  # repr: NaN == NaN, and int vs float told apart


def test_json_nested_huge_integers_leave_top_level_values_alone():
    # orjson reads a nested 20+ digit integer as a float; nothing nested is ever read as text
    line = b'{"text":"abc","meta":{"id":123456789012345678901234567890},"lang":"en"}'
    got, want = json_loads_line(line), _json_reference(line)
    assert {k: v for k, v in got.items() if k != "meta"} == \
        {k: v for k, v in want.items() if k != "meta"}
