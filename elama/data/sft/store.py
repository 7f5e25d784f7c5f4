"""The tokenized instruction dataset on disk and its manifest:

  <prefix>.bin/.idx            token ids, one megatron indexed-dataset document per example (int32)
  <prefix>.mask.bin/.idx       the answer mask beside them, same lengths (uint8, 1 = trained on)
  <prefix>.groups.npy          int32 (area, task) group index of each example
  <prefix>.manifest.json       format "elama.chat": tokenizer, settings, counts overall and per
                               area and task, rejects by reason
  <prefix>.rejects.jsonl       one line per rejected record: file, line, reason, detail
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

FORMAT = "elama.chat"
FORMAT_VERSION = 1


class SftDataError(ValueError):
    """A dataset that is missing or does not match what the run expects; names the file."""


def manifest_path(prefix: str) -> str:
    return prefix + ".manifest.json"


def read_manifest(prefix: str) -> dict:
    path = manifest_path(prefix)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SftDataError(f"{path}: cannot read the manifest ({e}); tokenize with "
                           "tools/preprocess_data.py --format chat") from None
    if manifest.get("format") != FORMAT:
        raise SftDataError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}: not an "
                           "instruction dataset (tools/preprocess_data.py --format chat)")
    return manifest


class DatasetWriter:
    """Examples appended in order; `close` writes the index files, the groups and the manifest."""

    def __init__(self, prefix: str):
        from elama.data.indexed import DocumentBuilder

        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        self.prefix = prefix
        self.ids = DocumentBuilder(prefix + ".bin", dtype=np.int32)
        self.mask = DocumentBuilder(prefix + ".mask.bin", dtype=np.uint8)
        self.groups: list[int] = []

    def add(self, ids: list[int], mask: list[int], group: int) -> None:
        self.ids.add_documents(np.asarray(ids, dtype=np.int32).tobytes(), [len(ids)])
        self.mask.add_documents(np.asarray(mask, dtype=np.uint8).tobytes(), [len(mask)])
        self.groups.append(group)

    def close(self, manifest: dict) -> None:
        self.ids.finalize(self.prefix + ".idx")
        self.mask.finalize(self.prefix + ".mask.idx")
        np.save(self.prefix + ".groups.npy", np.asarray(self.groups, dtype=np.int32))
        tmp = manifest_path(self.prefix) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}, f,
                      indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, manifest_path(self.prefix))  # the manifest last: it marks completion


@dataclass
class SftData:
    """A tokenized instruction dataset opened for reading (memory-mapped)."""
    prefix: str
    manifest: dict
    ids: object
    mask: object
    groups: np.ndarray
    """Group index of each example."""
    names: list[tuple[str, str]]
    """(area, task) of each group index."""

    @property
    def lengths(self) -> np.ndarray:
        return self.ids.sequence_lengths

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.ids[i], dtype=np.int64), np.asarray(self.mask[i], dtype=np.int64)


def open_dataset(prefix: str, *, tokenizer_sha256: str | None = None) -> SftData:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    manifest = read_manifest(prefix)
    if tokenizer_sha256 and manifest["tokenizer"]["sha256"] != tokenizer_sha256:
        raise SftDataError(f"{manifest_path(prefix)}: tokenized with tokenizer sha256 "
                           f"{manifest['tokenizer']['sha256'][:12]}..., the run uses "
                           f"{tokenizer_sha256[:12]}...: retokenize or set data.tokenizer_path")
    ids, mask = IndexedDataset(prefix), IndexedDataset(prefix + ".mask")
    groups = np.load(prefix + ".groups.npy")
    if not len(ids) == len(mask) == len(groups) == manifest["examples_written"]:
        raise SftDataError(f"{prefix}: {len(ids)} id rows, {len(mask)} mask rows, {len(groups)} "
                           f"group entries, manifest says {manifest['examples_written']} examples; "
                           "the dataset is incomplete: tokenize it again")
    names = [(g["area"], g["task"]) for g in manifest["groups"]]
    return SftData(prefix, manifest, ids, mask, groups, names)
