"""ShopBench answer parsers with the official starter kit's semantics (parsers.py v0.1.1): raw
model text -> the structure its task type's metric scores. Every quirk is kept on purpose,
since published ShopBench scores depend on them (e.g. "10" is option 1, "[a, b]" keeps brackets).
"""
from __future__ import annotations

import ast

PARSER_VERSION = "0.1.1"
MAX_RESPONSE_CHARACTERS = 5000  # the kit scores only the first 5,000 characters of an answer
TASK_TYPES = ("multiple-choice", "generation", "retrieval", "ranking", "named_entity_recognition")
UNPARSED_MC = -1  # the kit's "could not parse" answer for multiple choice
RANKING_MAX_ITEM = 5  # ranking tasks order 5 candidates: larger numbers are dropped
RANKING_KEEP, RETRIEVAL_KEEP = 5, 3


def parse_multiple_choice(text: str) -> int:
    """The first non-blank character as an integer, else -1 (so "10" -> 1, " 2. because" -> 2)."""
    text = text.strip()
    try:
        return int(text[0])
    except (IndexError, ValueError):
        return UNPARSED_MC


def _comma_separated_ints(text: str) -> list[int]:
    # The kit keeps digits, commas and spaces only, then reads each comma-separated field that is
    # one integer: "1 2" (no comma) is one field that is not an integer, so it is dropped.
    kept = "".join(c for c in text if c.isnumeric() or c in ", ")
    values = []
    for field in kept.split(","):
        try:
            values.append(int(field))
        except ValueError:
            pass
    return values


def parse_ranking(text: str) -> list[int]:
    """Comma-separated item numbers <= 5, the first five; [] if any repeats."""
    items = [v for v in _comma_separated_ints(text) if v <= RANKING_MAX_ITEM][:RANKING_KEEP]
    return items if len(items) == len(set(items)) else []


def parse_retrieval(text: str) -> list[int]:
    """Comma-separated item numbers, the first three (repeats kept, as the kit does)."""
    return _comma_separated_ints(text)[:RETRIEVAL_KEEP]


def parse_generation(text: str) -> str:
    return text.strip()


def parse_named_entities(text: str) -> list[str]:
    """A Python list literal of strings, else the comma-separated non-blank fields, stripped."""
    try:
        value = ast.literal_eval(text)
    except Exception:  # noqa: BLE001 - the kit falls back on any failure (MemoryError included)
        value = None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return [field.strip() for field in text.split(",") if field.strip()]


PARSERS = {
    "multiple-choice": parse_multiple_choice,
    "generation": parse_generation,
    "retrieval": parse_retrieval,
    "ranking": parse_ranking,
    "named_entity_recognition": parse_named_entities,
}


def parse(task_type: str, text: str):
    """The kit's parse: the first MAX_RESPONSE_CHARACTERS characters, by task type."""
    if task_type not in PARSERS:
        raise ValueError(f"unknown task_type {task_type!r}; expected one of {list(TASK_TYPES)}")
    if not isinstance(text, str):
        raise TypeError(f"a model answer must be a string, got {type(text).__name__}")
    return PARSERS[task_type](text[:MAX_RESPONSE_CHARACTERS])


def is_unparsed(task_type: str, parsed) -> bool:
    """Whether the parser found no answer at all (scored 0 by every metric, counted per task)."""
    if task_type == "multiple-choice":
        return parsed == UNPARSED_MC
    return len(parsed) == 0
