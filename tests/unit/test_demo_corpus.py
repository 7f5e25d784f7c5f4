"""The demo corpus: deterministic, multilingual e-commerce plus real English, tokenized."""
from __future__ import annotations

import gzip
import json

from elama.data.demo_corpus import (LANGUAGES, build_demo_datasets, iter_ecommerce_records,
                                    write_demo_corpus)
from elama.data.manifest import read_manifest


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = write_demo_corpus(str(tmp_path / "a"), seed=3, ecommerce_docs=200, general_bytes=50_000)
    b = write_demo_corpus(str(tmp_path / "b"), seed=3, ecommerce_docs=200, general_bytes=50_000)
    c = write_demo_corpus(str(tmp_path / "c"), seed=4, ecommerce_docs=200, general_bytes=50_000)
    for name in a:
        for pa, pb, pc in zip(a[name], b[name], c[name]):
            assert open(pa, "rb").read() == open(pb, "rb").read()
            if name == "ecommerce":
                assert open(pa, "rb").read() != open(pc, "rb").read()
    with gzip.open(a["ecommerce"][0], "rt") as f:
        listing = json.loads(f.readline())
    assert {"title", "aspects", "description", "lang"} <= set(listing)


def test_records_cover_every_language_and_kind():
    records = list(iter_ecommerce_records(500, seed=0))
    assert {r["lang"] for r in records} == set(LANGUAGES)
    assert {r["kind"] for r in records} == {"listing", "review"}
    assert sum(r["lang"] == "en" for r in records) > 200


def test_build_demo_datasets(tmp_path):
    prefixes = build_demo_datasets(str(tmp_path), seed=0)
    ecom, general = read_manifest(prefixes["ecommerce"]), read_manifest(prefixes["general"])
    assert set(ecom["tokens_by_language"]) == set(LANGUAGES)
    assert general["tokens_by_language"].keys() == {"en"} and general["tokens_written"] > 300_000
    assert ecom["documents_rejected"] == 0 and ecom["kind"] == "merged"
    assert ecom["text_keys"] == ["title", "aspects", "description"]
