"""Small corpora for the preprocessing tests: tricky documents in every input format, bad inputs
for every reject reason, and a larger synthetic corpus for the worker and kill tests."""
from __future__ import annotations

import gzip
import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from elama.data.demo_corpus import iter_ecommerce_records, render_ecommerce_text
from elama.tokenizer import MAX_WHITESPACE_RUN_CHARS

TRICKY_TEXTS = [
    "Nike Air Zoom Pegasus 40 – Herren Laufschuhe, Größe 44, schwarz/weiß",
    "Très belle robe d'été, taille M. Livraison rapide 👍🏽😀",
    "高品质不锈钢保温杯 500ml，保温12小时。日本製の包丁、切れ味抜群！",
    "Windows line endings\r\nsecond line\r\n\r\nthird paragraph\r\n",
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 700,  # a 31k-character word
    "a long gap" + " " * (MAX_WHITESPACE_RUN_CHARS + 17) + "then text",  # the split path
    "<|begin_of_text|>special tokens in user text stay text<|eot_id|>",
    "  leading and trailing whitespace is kept  ",
    "¿Dónde está la estación? Öffnungszeiten: Mo–Fr 9–18 Uhr. città, perché",
    "x",
]
EMPTY_AFTER_STRIP = " \n\t\u3000 "


def write_jsonl(path: str, records: list, compress: str | None = None) -> str:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    if compress == "gz":
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(data)
    elif compress == "zst":
        with open(path, "wb") as f:
            f.write(zstandard.ZstdCompressor().compress(data))
    else:
        with open(path, "wb") as f:
            f.write(data)
    return path


def write_tricky_corpus(root: str) -> tuple[list[str], list[str]]:
    """Four files (.jsonl, .jsonl.gz, .jsonl.zst, .parquet) of TRICKY_TEXTS, each file holding
    one empty-after-strip document too; returns (paths, the texts expected in output order)."""
    os.makedirs(root, exist_ok=True)
    records = [{"text": t, "lang": lang} for t, lang in
               zip(TRICKY_TEXTS, ["de", "fr", "zh", "en", "en", "en", "en", "en", "es", "en"])]
    paths, expected = [], []
    for i, (name, compress) in enumerate([("a.jsonl", None), ("b.jsonl.gz", "gz"),
                                          ("c.jsonl.zst", "zst")]):
        recs = records[i:] + records[:i] + [{"text": EMPTY_AFTER_STRIP, "lang": "en"}]
        paths.append(write_jsonl(os.path.join(root, name), recs, compress))
        expected += [r["text"] for r in recs[:-1]]
    recs = records[::-1] + [{"text": EMPTY_AFTER_STRIP, "lang": "en"}]
    table = pa.Table.from_pylist(recs)
    paths.append(os.path.join(root, "d.parquet"))
    pq.write_table(table, paths[-1], row_group_size=3)
    expected += [r["text"] for r in recs[:-1]]
    return paths, expected


def write_bad_corpus(root: str) -> dict:
    """One file per failure mode; returns {"paths", "rejects": [(file, line, reason)],
    "good_texts": texts expected in output order}."""
    os.makedirs(root, exist_ok=True)
    bad = os.path.join(root, "bad.jsonl")
    lines = [b'{"text": "first good document"}', b'{"text": "unterminated', b"",
             b'{"title": "no text key"}', b'{"text": 42}', b'{"text": null}',
             b'{"text": "  \\n "}', b'{"text": "caf\xe9 in latin-1"}', b"[1, 2]",
             b'{"text": "lone \\ud800 surrogate"}', b'{"text": "last good document"}']
    with open(bad, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    rejects = [(bad, 2, "malformed_json"), (bad, 3, "blank_line"), (bad, 4, "missing_key"),
               (bad, 5, "non_string_key"), (bad, 6, "non_string_key"), (bad, 7, "empty_text"),
               (bad, 8, "invalid_utf8"), (bad, 9, "malformed_json"), (bad, 10, "invalid_utf8")]
    good = ["first good document", "last good document"]
    rng = random.Random(1)
    texts = [f"review {i}: " + " ".join(rng.choice(["good", "bad", "fits", "small", "rot", "bleu"])
                                        for _ in range(30)) for i in range(3000)]
    data = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    gz = os.path.join(root, "cut.jsonl.gz")
    with open(gz, "wb") as f:
        f.write(gzip.compress(data, compresslevel=1, mtime=0)[:-30_000])
    zst = os.path.join(root, "cut.jsonl.zst")
    comp = zstandard.ZstdCompressor().compressobj()
    out = b""
    for k in range(0, len(texts), 500):  # one zstd block per 500 lines: decodable up to the cut
        out += comp.compress("".join(json.dumps({"text": t}) + "\n" for t in texts[k:k + 500])
                             .encode())
        out += comp.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    out += comp.flush()
    with open(zst, "wb") as f:
        f.write(out[:len(out) * 3 // 4])
    return {"paths": [bad, gz, zst], "rejects": rejects, "good_texts": good, "cut_texts": texts}


def write_synthetic_files(root: str, n_files: int, docs_per_file: int, seed: int = 0
                          ) -> list[str]:
    """Plain .jsonl files of rendered e-commerce records ({"text", "lang"})."""
    os.makedirs(root, exist_ok=True)
    paths = []
    for i in range(n_files):
        records = [{"text": render_ecommerce_text(r), "lang": r["lang"]}
                   for r in iter_ecommerce_records(docs_per_file, seed=seed + i)]
        paths.append(write_jsonl(os.path.join(root, f"part-{i:03d}.jsonl"), records))
    return paths
