"""Writing tokenized data: one unit of input -> one part (.bin/.idx/.rejects.jsonl/.json), parts ->
a shard per input file, shards -> one merged dataset. Every file is written under a temporary name
and renamed when complete; a part's or dataset's JSON is renamed last and is its commit marker.
"""
from __future__ import annotations

import array
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy

from elama.data.indexed import DocumentBuilder
from elama.data.manifest import (load_json, manifest_path, pin_dataset, sum_counts,
                                 write_json_atomic)
from elama.data.readers import (MISSING, InputError, StreamBreak, Unit, iter_line_blocks,
                                iter_parquet_batches, json_loads_line, parquet_columns)

logger = logging.getLogger(__name__)
_JSON = json.JSONDecoder()
FLUSH_TOKENS = 1 << 20  # tokens buffered before one write: ~4 MB, whatever the document sizes
PROGRESS_INTERVAL_S = 0.5
UNKNOWN_LANGUAGE = "und"  # BCP 47 "undetermined"

Progress = Callable[[int, int, int], None]  # (documents, tokens, input bytes) since last call


@dataclass(frozen=True)
class TextSpec:
    """How a record becomes a document; everything here changes the bytes written."""
    text_keys: tuple[str, ...] = ("text",)
    text_separator: str = "\n\n"
    add_bos: bool = True
    add_eos: bool = True
    language: str | None = None
    language_key: str | None = None
    accept_truncated: bool = False
    """Keep the lines before a truncated or corrupt input's break (one reject, the loss logged)
    instead of failing that file."""


def _tmp(path: str) -> str:
    # per-process names: an orphaned worker of a killed run never shares a file with a rerun
    return f"{path}.tmp.{os.getpid()}"


def _remove(paths) -> None:
    for path in paths:
        if os.path.exists(path):
            os.remove(path)


def dataset_files(prefix: str) -> list[str]:
    return [prefix + ".bin", prefix + ".idx", prefix + ".rejects.jsonl", manifest_path(prefix)]


class UnitWriter:
    """Tokenizes one unit into the part `prefix`; `run()` returns the part record (its .json)."""

    def __init__(self, tokenizer, spec: TextSpec, unit: Unit, prefix: str, progress: Progress):
        self.encode = tokenizer.encode_to_buffer
        self.spec, self.unit, self.prefix = spec, unit, prefix
        self.key = spec.text_keys[0] if len(spec.text_keys) == 1 else None
        self.lang_key = spec.language_key
        self.bos = array.array("I", [tokenizer.bos_id]).tobytes() if spec.add_bos else b""
        self.eos = array.array("I", [tokenizer.eos_id]).tobytes() if spec.add_eos else b""
        self.extra = int(spec.add_bos) + int(spec.add_eos)
        self.bufs: list = []
        self.lengths: list[int] = []
        self.pending = self.tokens = self.written = self.rejected = self.read = self.lines = 0
        self.reasons: dict[str, int] = {}
        self.lang_docs: dict[str, int] = {}
        self.lang_tokens: dict[str, int] = {}
        self.progress, self.last_report = progress, time.monotonic()
        self.reported, self.unreported_bytes = (0, 0), 0
        self.builder = DocumentBuilder(_tmp(prefix + ".bin"), dtype=numpy.int32)
        self.rejects = open(_tmp(prefix + ".rejects.jsonl"), "w", encoding="utf-8")

    def run(self) -> dict:
        bytes_read = 0
        try:
            for item in self._items():
                if type(item) is StreamBreak:
                    self._stream_break(item)
                    break
                bytes_read += item
                self.unreported_bytes += item
                if time.monotonic() - self.last_report >= PROGRESS_INTERVAL_S:
                    self._report()
        finally:
            self.rejects.close()
        self._flush()
        self._report()
        self.builder.finalize(_tmp(self.prefix + ".idx"))
        if self.read != self.written + self.rejected:  # a bug, never bad input
            raise RuntimeError(f"{self.unit}: read {self.read} != written {self.written} + "
                               f"rejected {self.rejected}")
        for suffix in (".bin", ".idx", ".rejects.jsonl"):
            os.replace(_tmp(self.prefix + suffix), self.prefix + suffix)
        part = {"unit": self.unit.to_dict(), "lines": self.lines, **self._counts(bytes_read)}
        return part

    def _stream_break(self, item: StreamBreak) -> None:
        message = item.describe(self.unit.path, self.lines)
        if not self.spec.accept_truncated:
            raise InputError(f"{message}. Replace the file, or rerun with --accept-truncated to "
                             "keep the lines before the break (the loss is reported)")
        logger.warning("accepted (--accept-truncated) %s", message)
        self.read += 1
        self.reject(self.lines + 1, item.reason, f"{item.detail}; lost at least "
                    f"{item.lines_lost} lines, {item.bytes_lost} bytes")

    def _items(self):
        """Tokenize block by block, yielding input bytes consumed, or a StreamBreak."""
        if self.unit.fmt == "parquet":
            columns = [*self.spec.text_keys, *([self.lang_key] if self.lang_key else [])]
            self.file_columns = parquet_columns(self.unit.path)
            for batch in iter_parquet_batches(self.unit, columns):
                if type(batch) is StreamBreak:
                    yield batch
                    return
                values, rows, nbytes = batch
                self._rows(values, rows)
                yield nbytes
            return
        for block in iter_line_blocks(self.unit):
            if type(block) is StreamBreak:
                yield block
                return
            self._lines(block[0])
            yield block[1]

    def _lines(self, lines: list[bytes]) -> None:
        decode, record_fn, lineno = json_loads_line, self.record, self.lines
        self.lines += len(lines)
        self.read += len(lines)
        for line in lines:
            lineno += 1
            try:
                record = decode(line)
            except ValueError as e:  # UnicodeDecodeError included
                record = self._parse_failed(line, lineno, e)
                if record is None:
                    continue
            if type(record) is dict:
                record_fn(record, lineno)
            else:
                self.reject(lineno, "malformed_json",
                            f"top-level JSON {type(record).__name__}, expected an object")

    def _parse_failed(self, line: bytes, lineno: int, error: ValueError) -> dict | None:
        if line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark opening the file
            try:
                return _JSON.decode(line[3:].decode())
            except ValueError as e:
                error = e
        if isinstance(error, UnicodeDecodeError):
            self.reject(lineno, "invalid_utf8", str(error))
        elif line.strip():
            self.reject(lineno, "malformed_json", f"{error}; line starts {line[:60]!r}")
        else:
            self.reject(lineno, "blank_line", "no JSON on this line")
        return None

    def _rows(self, values: dict[str, list], rows: int) -> None:
        lineno, columns = self.lines, list(values)
        self.lines += rows
        self.read += rows
        for i in range(rows):
            self.record({c: values[c][i] for c in columns}, lineno + i + 1)

    def record(self, record: dict, lineno: int) -> None:
        if self.key is not None:
            text = record.get(self.key, MISSING)
        else:
            fields = [record.get(k, MISSING) for k in self.spec.text_keys]
            text = (self.spec.text_separator.join(fields)
                    if all(type(f) is str for f in fields) else None)
        if type(text) is not str:
            return self._reject_fields(record, lineno)
        if not text or text.isspace():
            return self.reject(lineno, "empty_text", "text is empty or only whitespace")
        try:
            buf = self.encode(text)
        except UnicodeEncodeError as e:
            return self.reject(lineno, "invalid_utf8", f"lone surrogate in text: {e}")
        n = (memoryview(buf).nbytes >> 2) + self.extra
        self.bufs.append(buf)
        self.lengths.append(n)
        self.pending += n
        if self.lang_key is not None:
            lang = record.get(self.lang_key)
            lang = lang if type(lang) is str and lang else UNKNOWN_LANGUAGE
            self.lang_docs[lang] = self.lang_docs.get(lang, 0) + 1
            self.lang_tokens[lang] = self.lang_tokens.get(lang, 0) + n
        if self.pending >= FLUSH_TOKENS:
            self._flush()

    def _reject_fields(self, record: dict, lineno: int) -> None:
        for key in self.spec.text_keys:
            value = record.get(key, MISSING)
            if value is MISSING:
                present = self.file_columns if self.unit.fmt == "parquet" else sorted(record)
                return self.reject(lineno, "missing_key",
                                   f"no key {key!r}; keys: {present[:10]}")
            if type(value) is not str:
                return self.reject(lineno, "non_string_key",
                                   f"{key!r} is {type(value).__name__}, expected a string")

    def reject(self, lineno: int, reason: str, detail: str) -> None:
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.rejects.write(json.dumps({"file": self.unit.path, "line": lineno, "reason": reason,
                                       "detail": detail}, ensure_ascii=False) + "\n")

    def _flush(self) -> None:
        if not self.bufs:
            return
        # prefix + sep.join + suffix wraps every document in BOS/EOS with one join
        sep = self.eos + self.bos
        self.builder.add_documents(self.bos + sep.join(self.bufs) + self.eos, self.lengths)
        self.written += len(self.lengths)
        self.tokens += self.pending
        self.bufs, self.lengths, self.pending = [], [], 0

    def _report(self) -> None:
        docs, tokens = self.read, self.tokens + self.pending
        self.progress(docs - self.reported[0], tokens - self.reported[1], self.unreported_bytes)
        self.reported, self.last_report, self.unreported_bytes = (docs, tokens), time.monotonic(), 0

    def _counts(self, bytes_read: int) -> dict:
        if self.lang_key is None:
            lang = self.spec.language or UNKNOWN_LANGUAGE
            self.lang_docs = {lang: self.written} if self.written else {}
            self.lang_tokens = {lang: self.tokens} if self.written else {}
        return sum_counts([{
            "documents_read": self.read, "documents_written": self.written,
            "documents_rejected": self.rejected, "tokens_written": self.tokens,
            "bytes_read": bytes_read, "documents_rejected_by_reason": self.reasons,
            "documents_by_language": self.lang_docs, "tokens_by_language": self.lang_tokens}])


def write_part(tokenizer, spec: TextSpec, unit: Unit, prefix: str, settings: dict,
               fingerprint: dict, progress: Progress) -> dict:
    part = UnitWriter(tokenizer, spec, unit, prefix, progress).run()
    part = {"input": fingerprint, "settings": settings, **part}
    write_json_atomic(prefix + ".json", part)
    return part


def load_part(prefix: str, unit: Unit, settings: dict, fingerprint: dict) -> dict | None:
    """The committed part for exactly this unit, input file state and settings, else None."""
    part = load_json(prefix + ".json")
    if (part is None or part.get("unit") != unit.to_dict() or part.get("input") != fingerprint
            or part.get("settings") != settings):
        return None
    if not all(os.path.isfile(prefix + s) for s in (".bin", ".idx", ".rejects.jsonl")):
        return None
    return part


def concat_datasets(sources: list[str], dest: str, *, move: bool) -> None:
    """dest.bin/.idx = sources in order (renamed if one and `move`, else appended)."""
    assembler = Assembler(sources, dest, move=move)
    assembler.advance([True] * len(sources))
    assembler.commit()


class Assembler:
    """dest.bin/.idx built from sources in order, each appended as soon as it and every source
    before it exist: a shard's parts join while later parts are still being tokenized, so
    little concatenation is left when the last part arrives. Written under temporary names and
    renamed by commit(); a run killed before that leaves only temporaries (removed on rerun).
    A single source with `move` is renamed into place by commit() instead of copied."""

    def __init__(self, sources: list[str], dest: str, *, move: bool = False):
        self.sources, self.dest = sources, dest
        self.rename = move and len(sources) == 1
        self.builder: DocumentBuilder | None = None
        self.appended = 0

    def advance(self, ready: list) -> None:
        """Append the sources ready[k] says are complete, up to the first that is not."""
        while not self.rename and self.appended < len(self.sources) and ready[self.appended]:
            if self.builder is None:
                self.builder = DocumentBuilder(_tmp(self.dest + ".bin"), dtype=numpy.int32)
            self.builder.add_index(self.sources[self.appended])
            self.appended += 1

    def commit(self) -> None:
        if self.rename:
            os.replace(self.sources[0] + ".bin", self.dest + ".bin")
            os.replace(self.sources[0] + ".idx", self.dest + ".idx")
            return
        if self.appended != len(self.sources):
            raise RuntimeError(f"{self.dest}: {len(self.sources) - self.appended} source(s) not "
                               "yet appended")
        self.builder.finalize(_tmp(self.dest + ".idx"))
        os.replace(_tmp(self.dest + ".bin"), self.dest + ".bin")
        os.replace(_tmp(self.dest + ".idx"), self.dest + ".idx")


def concat_rejects(sources: list[str], line_offsets: list[int], dest: str) -> None:
    """dest.rejects.jsonl = the sources' rejects in order, line numbers shifted per source."""
    with open(_tmp(dest + ".rejects.jsonl"), "w", encoding="utf-8") as out:
        for source, offset in zip(sources, line_offsets):
            with open(source + ".rejects.jsonl", encoding="utf-8") as f:
                for line in f:
                    if offset:
                        rec = json.loads(line)
                        rec["line"] += offset
                        line = json.dumps(rec, ensure_ascii=False) + "\n"
                    out.write(line)
    os.replace(_tmp(dest + ".rejects.jsonl"), dest + ".rejects.jsonl")


def assemble_shard(assembler: Assembler, parts: list[dict], manifest: dict) -> None:
    """Parts (in unit order, every one committed) -> the shard assembler.dest, the parts' data
    joined by the assembler that has been appending them; its manifest is written last, then the
    parts go."""
    offsets, line = [], 0
    for part in parts:
        offsets.append(line)
        line += part["lines"]
    shard = assembler.dest
    concat_rejects(assembler.sources, offsets, shard)
    assembler.advance(parts)
    assembler.commit()
    write_json_atomic(manifest_path(shard), pin_dataset(manifest, shard))
    for prefix in assembler.sources:
        _remove([prefix + ".bin", prefix + ".idx", prefix + ".rejects.jsonl", prefix + ".json"])