"""ShopBench rows and reports: reading and checking the JSON-lines format, raw predictions files,
scoring (parse, metric per row, task mean or pooled micro-F1, track and overall means) and the
report (`--report` JSON and a Markdown table). Generation lives in elama.eval.generate.
"""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from elama.eval import metrics as M
from elama.eval.parsers import PARSER_VERSION, TASK_TYPES, is_unparsed, parse

logger = logging.getLogger(__name__)

ROW_FIELDS = {"input_field": str, "output_field": object, "task_name": str, "task_type": str,
              "metric": str, "is_multiple_choice": bool, "track": str}
MAX_PROBLEMS_SHOWN = 20


class EvalInputError(ValueError):
    """Bad evaluation input; the message names the file, line and field and what to do."""


@dataclass(frozen=True)
class Row:
    """One ShopBench question; `where` is "file:line" for messages."""
    input_field: str
    output_field: object
    task_name: str
    task_type: str
    metric: str
    is_multiple_choice: bool
    track: str
    where: str


def raise_problems(path, problems: list[str], what: str) -> None:
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise EvalInputError(f"{path}: {len(problems)} problem(s) in {what}; fix them and rerun:\n"
                             + "\n".join(f"  - {p}" for p in shown) + more)


def read_jsonl(path) -> list[tuple[int, object]]:
    """(line number, value) for each non-blank line; EvalInputError on unreadable JSON."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: no such file")
    out, problems = [], []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append((lineno, json.loads(line)))
            except ValueError as e:
                problems.append(f"line {lineno}: not valid JSON ({e})")
    raise_problems(path, problems, "its JSON lines")
    return out


def row_problems(obj, where: str) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: expected a JSON object, got {type(obj).__name__}"]
    problems = []
    for name, kind in ROW_FIELDS.items():
        if name not in obj:
            problems.append(f"{where}: field '{name}' is missing")
        elif kind is not object and not isinstance(obj[name], kind):
            problems.append(f"{where}: field '{name}' must be a {kind.__name__}, "
                            f"got {type(obj[name]).__name__}")
    if problems:
        return problems
    task_type, metric = obj["task_type"], obj["metric"]
    if task_type not in TASK_TYPES:
        return [f"{where}: field 'task_type' is {task_type!r}; expected one of {list(TASK_TYPES)}"]
    if metric not in M.METRICS:
        return [f"{where}: field 'metric' is {metric!r}; expected one of {list(M.METRICS)}"]
    if metric not in M.METRICS_BY_TASK_TYPE[task_type]:
        return [f"{where}: field 'metric' {metric!r} cannot score task_type {task_type!r} "
                f"(its metrics: {list(M.METRICS_BY_TASK_TYPE[task_type])})"]
    need = M.truth_problem(metric, obj["output_field"])
    if need:
        return [f"{where}: field 'output_field' must be {need} for metric {metric!r}, "
                f"got {json.dumps(obj['output_field'])[:80]}"]
    return []


def load_rows(path) -> list[Row]:
    """Every row of a ShopBench JSON-lines file, checked: all problems in one EvalInputError.
    A task must keep one task_type, metric and track throughout."""
    rows, problems, seen = [], [], {}
    for lineno, obj in read_jsonl(path):
        where = f"line {lineno}"
        found = row_problems(obj, where)
        problems += found
        if found:
            continue
        rows.append(Row(**{k: obj[k] for k in ROW_FIELDS}, where=f"{path}:{lineno}"))
        key = (obj["task_type"], obj["metric"], obj["track"])
        first = seen.setdefault(obj["task_name"], (key, lineno))
        if first[0] != key:
            problems.append(f"{where}: task '{obj['task_name']}' has (task_type, metric, track) "
                            f"{key}, but line {first[1]} gave it {first[0]}")
    if not rows and not problems:
        problems.append("no rows")
    raise_problems(path, problems, "its ShopBench rows")
    return rows


def load_predictions(path, n_rows: int, rows_path="the tasks file") -> list[str]:
    """Raw model outputs, one {"output": str} per line in row order."""
    outputs, problems = [], []
    entries = read_jsonl(path)
    for lineno, obj in entries:
        if not isinstance(obj, dict) or "output" not in obj:
            problems.append(f"line {lineno}: field 'output' is missing")
        elif not isinstance(obj["output"], str):
            problems.append(f"line {lineno}: field 'output' must be a string, "
                            f"got {type(obj['output']).__name__}")
        else:
            outputs.append(obj["output"])
    raise_problems(path, problems, "its predictions")
    if len(entries) != n_rows:
        raise EvalInputError(f"{path}: {len(entries)} predictions for {n_rows} rows in {rows_path}; "
                             "write exactly one {\"output\": ...} line per row, in row order")
    return outputs


def score_task(rows: list[Row], outputs: list[str]) -> dict:
    """{metric, task_type, track, n, score, unparsed} of one task's rows and raw outputs."""
    task_type, metric = rows[0].task_type, rows[0].metric
    parsed = [parse(task_type, text) for text in outputs]
    unparsed = [is_unparsed(task_type, p) for p in parsed]
    truths = [r.output_field for r in rows]
    if metric in M.SENTENCE_METRICS:
        per_row = M.cosine_scores(M.SENTENCE_METRICS[metric], parsed, truths)
    else:
        per_row = [M.ROW_METRICS[metric](p, t) for p, t in zip(parsed, truths)]
    if metric == "micro f1":
        score = M.micro_f1(per_row)
    else:
        # No override for unparsed answers: the kit's defaults (-1, []) already score 0, and an
        # empty generation is scored by its metric as the kit does (a cosine may exceed 0).
        score = math.fsum(float(s) for s in per_row) / len(rows)
    return {"metric": metric, "task_type": task_type, "track": rows[0].track, "n": len(rows),
            "score": score, "unparsed": sum(unparsed)}


def score_rows(rows: list[Row], outputs: list[str], *, progress: bool = True) -> dict:
    """The report: {"tasks": {name: {...}}, "tracks": {track: {"score", "tasks"}}, "overall"}.
    A task scores its mean (pooled micro-F1 for NER), a track the mean of its tasks, overall
    the mean of the tracks."""
    from tqdm import tqdm

    if len(outputs) != len(rows):
        raise EvalInputError(f"{len(outputs)} outputs for {len(rows)} rows")
    by_task = defaultdict(list)
    for i, row in enumerate(rows):
        by_task[row.task_name].append(i)
    tasks = {}
    for name, idx in tqdm(by_task.items(), desc="scoring tasks", disable=not progress):
        tasks[name] = score_task([rows[i] for i in idx], [outputs[i] for i in idx])
    return combine_tasks(tasks)


def combine_tasks(tasks: dict) -> dict:
    """The report around task results: track means of task scores, overall mean of tracks."""
    if not tasks:
        raise EvalInputError("no tasks to report")
    tracks = defaultdict(list)
    for name, t in tasks.items():
        tracks[t["track"]].append(name)
    track_scores = {tr: {"score": math.fsum(tasks[n]["score"] for n in names) / len(names),
                         "tasks": names} for tr, names in tracks.items()}
    overall = math.fsum(t["score"] for t in track_scores.values()) / len(track_scores)
    return {"tasks": tasks, "tracks": track_scores, "overall": overall,
            "parser_version": PARSER_VERSION}


def markdown_table(columns: list[str], rows: list[list], numeric_from: int) -> str:
    """A Markdown table; columns from index `numeric_from` on are right-aligned, floats as %.4f."""
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    align = ["---" if i < numeric_from else "---:" for i in range(len(columns))]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in
                     [columns, align, *([cell(v) for v in r] for r in rows)])


def markdown_report(report: dict) -> str:
    rows = [[name, t["track"], t["task_type"], t["metric"], t["n"], t["unparsed"], t["score"]]
            for name, t in report["tasks"].items()]
    rows += [[f"**{track}**", "", "", "", "", "", t["score"]] for track, t in report["tracks"].items()]
    rows.append(["**overall**", "", "", "", "", "", report["overall"]])
    return markdown_table(["task", "track", "task_type", "metric", "n", "unparsed", "score"], rows, 4)


def write_report(path, report: dict) -> None:
    """Written whole or not at all (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
