"""Offline tokenization of instruction data (tools/preprocess_data.py --format chat): JSONL
records with chat `messages` or ShopBench-style input/output fields, each tagged with a
capability area and a task, rendered with the Llama 3.1 chat template and its answer mask.
Every record is counted: written (per area and task), truncated, or rejected with its reason."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict

import orjson

from elama.data.readers import expand_inputs, input_format, iter_line_blocks, json_loads_line, plan_units
from elama.data.sft.chat import TRUNCATION, ChatFields, ChatRecordError, record_messages, render
from elama.data.sft.store import DatasetWriter
from elama.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)


class TooManyChatRejectsError(RuntimeError):
    """More records rejected than --max-reject-fraction allows."""


def _group_name(record: dict, fields: ChatFields) -> tuple[str, str]:
    area, task = record.get(fields.area_key), record.get(fields.task_key)
    return (area if isinstance(area, str) and area else "und",
            task if isinstance(task, str) and task else "und")


def _records(path: str):
    """(line number, record or ChatRecordError) of one .jsonl/.jsonl.gz/.jsonl.zst file."""
    if input_format(path) == "parquet":
        raise ValueError(f"{path}: --format chat reads JSON Lines (.jsonl, .jsonl.gz, .jsonl.zst)")
    lineno = 0
    for unit in plan_units(path, 1 << 62):
        for block in iter_line_blocks(unit):
            if not isinstance(block, tuple):
                raise ValueError(block.describe(path, lineno))
            for line in block[0]:
                lineno += 1
                if not line.strip():
                    yield lineno, ChatRecordError("blank_line", "empty line")
                    continue
                try:
                    record = json_loads_line(line)
                except ValueError as e:
                    yield lineno, ChatRecordError("malformed_json", str(e)[:200])
                    continue
                if not isinstance(record, dict):
                    yield lineno, ChatRecordError("malformed_json", "not a JSON object")
                    continue
                yield lineno, record


def _count(rendered, *counters: Counter) -> None:
    for c in counters:
        c["examples_written"] += 1
        c["tokens_written"] += len(rendered.ids)
        c["answer_tokens"] += rendered.answer_tokens
        c["examples_truncated"] += rendered.truncated


def tokenize_chat(inputs, output_prefix: str, *, fields: ChatFields = ChatFields(),
                  max_seq_len: int | None = None, truncation: str = "reject",
                  max_reject_fraction: float = 0.01, tokenizer_path: str | None = None) -> dict:
    """Tokenize the inputs into one instruction dataset at output_prefix; returns its manifest."""
    if truncation not in TRUNCATION:
        raise ValueError(f"--truncation {truncation!r} is not one of {TRUNCATION}")
    tokenizer = load_tokenizer(tokenizer_path)
    writer = DatasetWriter(output_prefix)
    groups: dict[tuple[str, str], int] = {}
    per_group: dict[int, Counter] = {}
    rejects, totals = Counter(), Counter()
    with open(output_prefix + ".rejects.jsonl", "wb") as rejects_file:
        for path in expand_inputs(inputs):
            for lineno, record in _records(path):
                totals["examples_read"] += 1
                try:
                    if isinstance(record, ChatRecordError):
                        raise record
                    rendered = render(tokenizer, record_messages(record, fields),
                                      max_len=max_seq_len, truncation=truncation)
                except ChatRecordError as e:
                    rejects[e.reason] += 1
                    rejects_file.write(orjson.dumps({"file": path, "line": lineno,
                                                     "reason": e.reason, "detail": str(e)}) + b"\n")
                    continue
                g = groups.setdefault(_group_name(record, fields), len(groups))
                writer.add(rendered.ids, rendered.mask, g)
                _count(rendered, per_group.setdefault(g, Counter()), totals)
    totals["examples_rejected"] = sum(rejects.values())
    manifest = {
        "name": output_prefix.rsplit("/", 1)[-1],
        "tokenizer": {"name": tokenizer.name, "sha256": tokenizer.sha256,
                      "vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id},
        "dtype": "int32", "mask_dtype": "uint8", "chat_template": "llama3.1",
        "fields": asdict(fields), "max_seq_len": max_seq_len, "truncation": truncation,
        **{k: totals[k] for k in ("examples_read", "examples_written", "examples_rejected",
                                  "examples_truncated", "tokens_written", "answer_tokens")},
        "examples_rejected_by_reason": dict(sorted(rejects.items())),
        "groups": [{"area": a, "task": t, **{k: per_group[g][k] for k in (
            "examples_written", "tokens_written", "answer_tokens", "examples_truncated")}}
            for (a, t), g in groups.items()],
    }
    fraction = totals["examples_rejected"] / max(totals["examples_read"], 1)
    logger.info("%s: %d records read, %d written (%d truncated), %d rejected %s; %d tokens, "
                "%d answer tokens, %d area/task groups", output_prefix, totals["examples_read"],
                totals["examples_written"], totals["examples_truncated"],
                totals["examples_rejected"], dict(rejects), totals["tokens_written"],
                totals["answer_tokens"], len(groups))
    if fraction > max_reject_fraction:
        raise TooManyChatRejectsError(
            f"{output_prefix}: {totals['examples_rejected']} of {totals['examples_read']} records "
            f"rejected ({fraction:.1%} > --max-reject-fraction {max_reject_fraction:.1%}), by "
            f"reason {dict(rejects)}; see {output_prefix}.rejects.jsonl (no manifest written: "
            "training refuses the dataset)")
    writer.close(manifest)
    return manifest
