"""The manifest of a tokenized dataset, `<prefix>.manifest.json`: schema, counting, validation.

Schema (format "elama.tokenized", format_version 1), one JSON object:
  kind                "shard" (one input file), "merged" (several, one .bin/.idx) or "index"
                      (no .bin/.idx of its own: `datasets` lists shard prefixes)
  name                basename of the prefix
  tokenizer           {name, sha256 (of tokenizer.model), vocab_size, bos_id, eos_id}
  dtype               "int32", the token type in <prefix>.bin
  add_bos, add_eos    whether each document is wrapped in <|begin_of_text|> / <|end_of_text|>
  text_keys, text_separator   the record fields joined (in order, by the separator) into the text
  language, language_key      the run's language, or the record field holding each document's
  documents_read      records seen = documents_written + documents_rejected, always
  documents_written, documents_rejected, tokens_written (everything in .bin, BOS/EOS included),
  bytes_read          input bytes (compressed size for .gz/.zst)
  documents_rejected_by_reason   {reason: n}; each also a line of <prefix>.rejects.jsonl
  documents_by_language, tokens_by_language   {language: n} ("und" when unknown)
  inputs              per input file: {path, format, bytes, mtime_ns} + the same counters
  datasets            (index only) shard prefixes relative to the manifest's directory
  tokenizer_backend   (merged, index) {backend, version} of the encoder of the run that finished
                      it (fastokens or tiktoken); the ids are the same whichever, so not a setting
  files               (shard, merged) the .bin/.idx this manifest describes: bin_bytes, idx_bytes,
                      idx_sha256, and the .idx header's sequences and documents; a replaced or
                      foreign .idx (even one with a valid header) fails read_manifest
Manifests hold no timestamps or output paths: a rerun, or a run elsewhere, writes the same bytes.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
from typing import Iterable

FORMAT = "elama.tokenized"
FORMAT_VERSION = 2  # 2: the "files" pin of .bin/.idx
TOKEN_DTYPE = "int32"
TOKEN_BYTES = 4
KINDS = ("shard", "merged", "index")
COUNT_FIELDS = ("documents_read", "documents_written", "documents_rejected", "tokens_written",
                "bytes_read")
DICT_FIELDS = ("documents_rejected_by_reason", "documents_by_language", "tokens_by_language")
SETTINGS_FIELDS = ("tokenizer", "dtype", "add_bos", "add_eos", "text_keys", "text_separator",
                   "language", "language_key")
REJECT_REASONS = ("malformed_json", "blank_line", "missing_key", "non_string_key", "empty_text",
                  "invalid_utf8", "truncated_input", "corrupt_input")


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or inconsistent with its dataset."""


def manifest_path(prefix: str) -> str:
    return prefix + ".manifest.json"


def empty_counts() -> dict:
    return {**{f: 0 for f in COUNT_FIELDS}, **{f: {} for f in DICT_FIELDS}}


def sum_counts(entries: Iterable[dict]) -> dict:
    """Counters summed over parts, inputs or shards; dict keys sorted so output is deterministic."""
    total = empty_counts()
    for entry in entries:
        for f in COUNT_FIELDS:
            total[f] += entry[f]
        for f in DICT_FIELDS:
            for k, v in entry[f].items():
                total[f][k] = total[f].get(k, 0) + v
    for f in DICT_FIELDS:
        total[f] = dict(sorted(total[f].items()))
    return total


def build_manifest(kind: str, prefix: str, settings: dict, inputs: list[dict],
                   datasets: list[str] | None = None, backend: dict | None = None) -> dict:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
                "name": os.path.basename(prefix), **settings, **sum_counts(inputs),
                "inputs": inputs}
    if datasets is not None:
        manifest["datasets"] = datasets
    if backend is not None:
        manifest["tokenizer_backend"] = backend
    return manifest


def pin_dataset(manifest: dict, prefix: str) -> dict:
    """Record in `manifest` (and return) the `files` pin of prefix.bin/.idx as they are now."""
    manifest["files"] = {"bin_bytes": os.path.getsize(prefix + ".bin"),
                         "idx_bytes": os.path.getsize(prefix + ".idx"),
                         "idx_sha256": _file_sha256(prefix + ".idx", *_stat_key(prefix + ".idx")),
                         **_idx_header(prefix + ".idx")}
    return manifest


def _stat_key(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4096)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # keyed on (path, size, mtime): an index and its shards are checked once per process
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


_IDX_MAGIC = b"MMIDIDX\x00\x00"
_IDX_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequences, documents + 1


def _idx_header(path: str) -> dict:
    """The counts in a megatron-core .idx header; ManifestError if it is not one."""
    with open(path, "rb") as f:
        head = f.read(_IDX_HEADER.size)
    if len(head) < _IDX_HEADER.size or not head.startswith(_IDX_MAGIC):
        raise ManifestError(f"{path}: not a megatron-core index (bad header); re-tokenize")
    _, _, _, sequences, document_indices = _IDX_HEADER.unpack(head)
    return {"sequences": sequences, "documents": document_indices - 1}


def _check_files(m: dict, prefix: str) -> list[str]:
    """The .bin/.idx on disk are the ones the manifest was written for."""
    pin = m.get("files")
    if not isinstance(pin, dict) or not {"bin_bytes", "idx_bytes", "idx_sha256"} <= set(pin):
        return ["field 'files' (the .bin/.idx pin) missing: re-tokenize with this version"]
    fix = f"the files changed after tokenizing; re-tokenize {prefix} (tools/preprocess_data.py)"
    for suffix, key in ((".bin", "bin_bytes"), (".idx", "idx_bytes")):
        size = os.path.getsize(prefix + suffix)
        if size != pin[key]:
            return [f"{prefix + suffix} has {size} bytes, the manifest pins {key}={pin[key]}: "
                    + fix]
    try:
        header = _idx_header(prefix + ".idx")
    except ManifestError as e:
        return [str(e)]
    problems = [f"{prefix}.idx header has {k}={header[k]}, the manifest pins {pin.get(k)}: {fix}"
                for k in ("sequences", "documents") if header[k] != pin.get(k)]
    if header["documents"] != m["documents_written"]:
        problems.append(f"{prefix}.idx holds {header['documents']} documents, documents_written="
                        f"{m['documents_written']}")
    if not problems and _file_sha256(prefix + ".idx", *_stat_key(prefix + ".idx")) \
            != pin["idx_sha256"]:
        problems.append(f"{prefix}.idx content differs from the manifest's idx_sha256: {fix}")
    return problems


def write_json_atomic(path: str, obj: dict) -> None:
    """Write then rename: the file appears under its final name complete or not at all."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def load_json(path: str) -> dict | None:
    """The JSON object in `path`, or None if absent or unreadable (left by an interrupted run)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_manifest(prefix: str) -> dict:
    """The validated manifest of `prefix`; ManifestError naming the file and every problem."""
    path = manifest_path(prefix)
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: no such manifest; tokenize the data with elama-preprocess "
                            f"(tools/preprocess_data.py --output-prefix {prefix} ...)")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except ValueError as e:
        raise ManifestError(f"{path}: not valid JSON ({e}); delete it and rerun "
                            "elama-preprocess") from None
    problems = _check_manifest(manifest, prefix)
    if problems:
        raise ManifestError(f"{path}: invalid manifest:\n"
                            + "\n".join(f"  - {p}" for p in problems))
    return manifest


def _check_manifest(m, prefix: str) -> list[str]:
    if not isinstance(m, dict):
        return [f"expected a JSON object, got {type(m).__name__}"]
    if m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
        return [f"format {m.get('format')!r} version {m.get('format_version')!r}; this elama "
                f"reads {FORMAT!r} version {FORMAT_VERSION}: re-tokenize with this version"]
    problems = [f"field {f!r} missing" for f in ("kind", "tokenizer", "dtype", "inputs",
                                                *SETTINGS_FIELDS, *COUNT_FIELDS, *DICT_FIELDS)
                if f not in m]
    if problems:
        return problems
    if m["kind"] not in KINDS:
        problems.append(f"kind {m['kind']!r} is not one of {KINDS}")
    if m["dtype"] != TOKEN_DTYPE:
        problems.append(f"dtype {m['dtype']!r}, expected {TOKEN_DTYPE!r}")
    tok = m["tokenizer"]
    if not isinstance(tok, dict) or not {"name", "sha256", "vocab_size"} <= set(tok):
        problems.append("tokenizer must hold name, sha256 and vocab_size")
    problems += _check_counts(m)
    if m["kind"] == "index":
        return problems + [str(e) for e in _check_index(m, prefix)]
    for suffix in (".bin", ".idx"):
        if not os.path.isfile(prefix + suffix):
            problems.append(f"{prefix + suffix} missing")
    if os.path.isfile(prefix + ".bin"):
        size, expected = os.path.getsize(prefix + ".bin"), m["tokens_written"] * TOKEN_BYTES
        if size != expected:
            problems.append(f"{prefix}.bin has {size} bytes, tokens_written="
                            f"{m['tokens_written']} needs {expected}")
    if not problems:
        problems += _check_files(m, prefix)
    return problems


def _check_counts(m: dict) -> list[str]:
    problems = []
    if m["documents_read"] != m["documents_written"] + m["documents_rejected"]:
        problems.append(f"documents_read={m['documents_read']} != documents_written="
                        f"{m['documents_written']} + documents_rejected={m['documents_rejected']}")
    for field, total in (("documents_rejected_by_reason", "documents_rejected"),
                         ("documents_by_language", "documents_written"),
                         ("tokens_by_language", "tokens_written")):
        if sum(m[field].values()) != m[total]:
            problems.append(f"{field} sums to {sum(m[field].values())}, {total}={m[total]}")
    if m["inputs"] and sum_counts(m["inputs"])["tokens_written"] != m["tokens_written"]:
        problems.append("inputs[].tokens_written do not sum to tokens_written")
    return problems


def _check_index(m: dict, prefix: str) -> list[ManifestError]:
    errors = []
    for rel in m.get("datasets", []):
        try:
            read_manifest(os.path.join(os.path.dirname(prefix), rel))
        except ManifestError as e:
            errors.append(e)
    return errors


def dataset_prefixes(prefix: str) -> list[str]:
    """The megatron dataset prefixes (.bin/.idx) behind `prefix`: itself, or an index's shards."""
    manifest = read_manifest(prefix)
    if manifest["kind"] != "index":
        return [prefix]
    return [os.path.join(os.path.dirname(prefix), rel) for rel in manifest["datasets"]]
