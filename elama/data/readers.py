"""Input side of offline tokenization: which files, split into which units of work, read how.

Formats: .jsonl (split into line-aligned byte ranges, so one big file feeds several workers),
.jsonl.gz and .jsonl.zst (streamed through a decompressor object, so a truncated or corrupt stream
keeps every line before the break), .parquet (units of whole row groups, read in record batches).
Nothing here holds more than one block of a file in memory.
"""
from __future__ import annotations

import glob
import json
import os
import zlib
from dataclasses import asdict, dataclass, replace
from typing import Iterator, Sequence

import orjson

FORMATS = {".jsonl": "jsonl", ".jsonl.gz": "jsonl.gz", ".jsonl.zst": "jsonl.zst",
           ".parquet": "parquet"}
BLOCK_BYTES = 1 << 20
PARQUET_BATCH_ROWS = 4096
MISSING = type("Missing", (), {"__repr__": lambda self: "MISSING"})()
"""A key or column absent from a record (distinct from a JSON null / parquet null)."""


def input_format(path: str) -> str:
    for suffix, fmt in FORMATS.items():
        if path.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: unsupported input; expected a file ending in "
                     f"{', '.join(FORMATS)}")


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files and globs to an ordered list of files: each glob sorted, in the order given."""
    paths: list[str] = []
    for pattern in patterns:
        matches = [pattern] if os.path.isfile(pattern) else sorted(
            p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not matches and os.path.isdir(pattern):
            raise FileNotFoundError(
                f"input {pattern!r} is a directory; give its files or a glob, e.g. "
                f"--input '{os.path.join(pattern, '*.jsonl')}' or "
                f"'{os.path.join(pattern, '**', '*.jsonl.zst')}'")
        if not matches:
            raise FileNotFoundError(f"input {pattern!r} matches no file")
        paths += matches
    seen: set[str] = set()
    for path in paths:
        input_format(path)
        real = os.path.realpath(path)
        if real in seen:
            raise ValueError(f"input {path} is listed twice (after glob expansion); its documents "
                             "would be counted and trained on twice")
        seen.add(real)
    return paths


@dataclass(frozen=True)
class Unit:
    """One worker task: a line-aligned byte range [start, end) of a .jsonl, row groups
    [start, end) of a .parquet, or a whole compressed file (start=0, end=-1)."""
    path: str
    fmt: str
    index: int
    start: int
    end: int

    def to_dict(self) -> dict:
        return asdict(self)


class InputError(ValueError):
    """An input file that cannot be read to its end (truncated, corrupt): names it and where."""


@dataclass(frozen=True)
class StreamBreak:
    """The input stopped before its end: the lines before it were read. An error for the file
    unless truncated inputs are accepted; then one reject, with what was lost."""
    reason: str  # truncated_input | corrupt_input
    detail: str
    bytes_lost: int = 0
    """Known lost bytes: the partial line at the break and input bytes never decoded (a
    truncated file may have lost more beyond its end, which nothing here can count)."""
    lines_lost: int = 0
    """Known lost lines (parquet: rows after the break; jsonl: the partial line)."""

    def describe(self, path: str, lines_read: int) -> str:
        return (f"{path}: {self.reason} after line {lines_read}: {self.detail}; lost at least "
                f"{self.lines_lost} lines, {self.bytes_lost} bytes")


_JSON = json.JSONDecoder()
# orjson reads an integer literal beyond 64 bits as a float, where json keeps an int (bounds
# exclusive: -2**63 - 1 rounds to the float -2**63)
_INT64_MIN, _UINT64_END = -(2.0 ** 63), 2.0 ** 64


def json_loads_line(line: bytes):
    """One JSON Lines record, exactly as json reads it (object or error). orjson where it returns
    what json returns (~5x faster, the common case); json for what orjson refuses (NaN, 1e400,
    lone surrogate escapes, a BOM, invalid UTF-8) and for a record with a top-level float beyond
    64-bit integers (orjson's reading of a huge integer: the type a reject names). Nested values
    are never read as text, so their number types do not matter. json goes through str.decode +
    JSONDecoder.decode: JSON Lines is UTF-8, so json.loads' per-line encoding sniffing is skipped.
    """
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _JSON.decode(line.decode())
    if type(record) is dict:
        for value in record.values():
            if type(value) is float and not _INT64_MIN < value < _UINT64_END:
                return _JSON.decode(line.decode())
    return record


def plan_units(path: str, chunk_bytes: int, taper: bool = False) -> list[Unit]:
    """Units of about `chunk_bytes` (see chunk_offsets for `taper`)."""
    fmt = input_format(path)
    if fmt == "jsonl":
        return _plan_jsonl(path, chunk_bytes, taper)
    if fmt == "parquet":
        return _plan_parquet(path, chunk_bytes)
    return [Unit(path, fmt, 0, 0, -1)]


def chunk_offsets(size: int, chunk_bytes: int, taper: bool) -> list[int]:
    """Where units of a `size`-byte file start (before line alignment), 0 excluded. With `taper`,
    the last two chunks of a file larger than one are cut into halving pieces down to chunk/8:
    run largest first, the units left when work runs out are small and workers finish together."""
    offsets, pos = [], 0
    while True:
        remaining, step = size - pos, chunk_bytes
        if taper and size > chunk_bytes and remaining <= 2 * chunk_bytes:
            step = max(chunk_bytes // 8, remaining // 2, 1)
            if remaining - step < chunk_bytes // 8:  # no sliver after this unit
                return offsets
        pos += step
        if pos >= size:
            return offsets
        offsets.append(pos)


def _plan_jsonl(path: str, chunk_bytes: int, taper: bool) -> list[Unit]:
    size = os.path.getsize(path)
    bounds = [0]
    with open(path, "rb") as f:
        for target in chunk_offsets(size, chunk_bytes, taper):
            f.seek(target - 1)
            if f.read(1) != b"\n":  # inside a line: the next line starts after its newline
                f.readline()
            if f.tell() > bounds[-1] and f.tell() < size:
                bounds.append(f.tell())
    bounds.append(size)
    return [Unit(path, "jsonl", i, s, e) for i, (s, e) in enumerate(zip(bounds, bounds[1:]))]


def _plan_parquet(path: str, chunk_bytes: int) -> list[Unit]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception:  # unreadable footer: one unit, whose reader reports the break
        return [Unit(path, "parquet", 0, 0, -1)]
    units, start, acc = [], 0, 0
    for rg in range(meta.num_row_groups):
        acc += meta.row_group(rg).total_byte_size
        if acc >= chunk_bytes or rg == meta.num_row_groups - 1:
            units.append(Unit(path, "parquet", len(units), start, rg + 1))
            start, acc = rg + 1, 0
    return units or [Unit(path, "parquet", 0, 0, 0)]


def iter_line_blocks(unit: Unit) -> Iterator[tuple[list[bytes], int] | StreamBreak]:
    """(complete lines, input bytes consumed) per block of a .jsonl(.gz/.zst) unit; a StreamBreak
    last if a compressed stream ends early or is corrupt (the partial line there is not yielded)."""
    chunks = _plain_chunks(unit) if unit.fmt == "jsonl" else _decompressed_chunks(unit)
    carry = b""
    for chunk in chunks:
        if type(chunk) is StreamBreak:  # the partial line before the break is lost too
            yield replace(chunk, bytes_lost=chunk.bytes_lost + len(carry),
                          lines_lost=chunk.lines_lost + bool(carry))
            return
        data, nbytes = chunk
        lines = (carry + data).split(b"\n") if carry else data.split(b"\n")
        carry = lines.pop()
        yield lines, nbytes
    if carry:
        yield [carry], 0


def _plain_chunks(unit: Unit) -> Iterator[tuple[bytes, int]]:
    with open(unit.path, "rb") as f:
        f.seek(unit.start)
        remaining = unit.end - unit.start
        while remaining > 0:
            data = f.read(min(BLOCK_BYTES, remaining))
            if not data:
                raise OSError(f"{unit.path}: ended at byte {unit.end - remaining}, expected "
                              f"{unit.end}; the file changed while being read")
            remaining -= len(data)
            yield data, len(data)


def _new_decompressor(fmt: str):
    if fmt == "jsonl.gz":
        return zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj()


def _decompressed_chunks(unit: Unit) -> Iterator[tuple[bytes, int] | StreamBreak]:
    """Concatenated gzip members / zstd frames, one compressed block at a time. A stream that
    stops mid-member is truncated; a decoder error is corruption; either ends the file."""
    import zstandard

    out_bytes, decoder, fed = 0, _new_decompressor(unit.fmt), False
    with open(unit.path, "rb") as f:
        while raw := f.read(BLOCK_BYTES):
            nbytes = len(raw)
            while raw:
                if decoder.eof:  # the previous member / frame ended: the next one starts here
                    decoder = _new_decompressor(unit.fmt)
                try:
                    data = decoder.decompress(raw)
                except (zlib.error, zstandard.ZstdError) as e:
                    unread = os.fstat(f.fileno()).st_size - f.tell() + len(raw)
                    yield StreamBreak("corrupt_input", f"{unit.fmt} decoder error after "
                                      f"{out_bytes} decompressed bytes: {e}", unread)
                    return
                fed, raw = True, (decoder.unused_data if decoder.eof else b"")
                out_bytes += len(data)
                yield data, nbytes
                nbytes = 0
    if fed and not decoder.eof:
        yield StreamBreak("truncated_input", f"{unit.fmt} stream ends before its end marker "
                          f"after {out_bytes} decompressed bytes")


def parquet_columns(path: str) -> list[str]:
    """The file's column names (empty if its footer is unreadable)."""
    import pyarrow.parquet as pq

    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except Exception:
        return []


def iter_parquet_batches(unit: Unit, columns: Sequence[str]
                         ) -> Iterator[tuple[dict[str, list], int, int] | StreamBreak]:
    """({column: values}, rows, approximate input bytes) per record batch of a parquet unit.
    `columns` missing from the file's schema come back as MISSING per row."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(unit.path)
        names = set(pf.schema_arrow.names)
    except Exception as e:
        yield StreamBreak("truncated_input", f"unreadable parquet footer: {e}",
                          os.path.getsize(unit.path))
        return
    present = [c for c in dict.fromkeys(columns) if c in names]
    meta, groups = pf.metadata, list(range(unit.start, unit.end))
    # input bytes pro rata of rows, cumulative over the file so that units sum to its size
    file_bytes, file_rows = os.path.getsize(unit.path), max(1, meta.num_rows)
    row = sum(meta.row_group(g).num_rows for g in range(unit.start))
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=groups,
                                     columns=present or None):
            rows = batch.num_rows
            values = {c: (batch.column(c).to_pylist() if c in names else [MISSING] * rows)
                      for c in columns}
            nbytes = file_bytes * (row + rows) // file_rows - file_bytes * row // file_rows
            row += rows
            yield values, rows, nbytes
    except Exception as e:  # a corrupt page: the batches before it stand
        last = sum(meta.row_group(g).num_rows for g in range(unit.end))
        yield StreamBreak("corrupt_input", f"parquet read error: {e}",
                          file_bytes - file_bytes * row // file_rows, last - row)
