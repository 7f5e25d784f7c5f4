"""Mixtures of instruction data by capability area and task (data.sft.mixture): which examples
one pass of the mixture draws, and the budget report (examples, tokens, epochs per task) logged
before a run starts and recorded in its checkpoints.

unit=epochs: a task's value is passes over its examples (a fraction takes a seeded subset each
pass). unit=samples: values are relative weights of the examples_per_pass drawn (a task drawn
beyond its size repeats, in a fresh order each time). A '*' task stands for each task of its area
(with samples, the area's weight is shared by the tasks' example counts). Tasks the mixture does
not name are not drawn, and the report lists them.
"""
from __future__ import annotations

import numpy as np

from elama.data.sft.store import SftData, SftDataError


def group_values(data: SftData, sft) -> dict[int, float]:
    """Mixture value of each (area, task) group of the dataset that the mixture draws."""
    counts = np.bincount(data.groups, minlength=len(data.names))
    if not sft.mixture:
        return {g: 1.0 for g in range(len(data.names)) if counts[g]}
    values: dict[int, float] = {}
    for i, entry in enumerate(sft.mixture):
        match = [g for g, (area, task) in enumerate(data.names)
                 if area == entry.area and entry.task in ("*", task) and counts[g]]
        if not match:
            known = sorted({f"{a}/{t}" for a, t in data.names})
            raise SftDataError(f"data.sft.mixture[{i}]: {entry.area}/{entry.task} is not in "
                               f"{data.prefix} (area/task groups: {known})")
        total = sum(counts[g] for g in match)
        for g in match:
            share = counts[g] / total if sft.unit == "samples" and entry.task == "*" else 1.0
            values[g] = entry.value * share
    return values


def _take(rng: np.random.Generator, members: np.ndarray, k: int) -> np.ndarray:
    """k draws from members: whole shuffled passes, then a shuffled part of one more."""
    whole, rest = divmod(k, len(members))
    parts = [rng.permutation(members) for _ in range(whole)] + [rng.permutation(members)[:rest]]
    return np.concatenate(parts)


def draws_per_group(data: SftData, values: dict[int, float], sft) -> dict[int, int]:
    counts = np.bincount(data.groups, minlength=len(data.names))
    if sft.unit == "epochs":
        return {g: int(round(v * counts[g])) for g, v in values.items()}
    total = sft.examples_per_pass or len(data.groups)
    weight = sum(values.values())
    return {g: int(round(total * v / weight)) for g, v in values.items()}


def plan_pass(data: SftData, values: dict[int, float], sft, *, seed: int, pass_index: int
              ) -> np.ndarray:
    """Example indices of one pass of the mixture, shuffled; a pure function of its arguments."""
    rng = np.random.default_rng([seed, pass_index])
    draws = draws_per_group(data, values, sft)
    order = [_take(rng, np.flatnonzero(data.groups == g), k) for g, k in sorted(draws.items()) if k]
    if not order:
        raise SftDataError(f"data.sft.mixture draws no example from {data.prefix}")
    return rng.permutation(np.concatenate(order))


def budget(data: SftData, values: dict[int, float], sft, *, passes: float) -> list[dict]:
    """Per task of the dataset: examples, drawn examples, tokens and answer tokens drawn, and
    epochs over the run (passes of the mixture it takes)."""
    draws = draws_per_group(data, values, sft)
    rows = []
    for g, (area, task) in enumerate(data.names):
        members = data.groups == g
        n = int(members.sum())
        drawn = draws.get(g, 0) * passes
        tokens = int(data.lengths[members].sum())
        answers = next(x["answer_tokens"] for x in data.manifest["groups"]
                       if (x["area"], x["task"]) == (area, task))
        rows.append({"area": area, "task": task, "examples": n, "drawn": round(drawn, 1),
                     "epochs": round(drawn / n, 3) if n else 0.0,
                     "tokens": round(tokens * drawn / max(n, 1)),
                     "answer_tokens": round(answers * drawn / max(n, 1)),
                     "in_mixture": g in values})
    return rows


def format_budget(rows: list[dict], sequences: int, passes: float) -> str:
    lines = [f"SFT budget: {sequences} sequences = {passes:.2f} passes of the mixture",
             f"  {'area/task':32} {'examples':>9} {'drawn':>10} {'epochs':>7} {'tokens':>12} "
             f"{'answer':>10}"]
    for r in rows:
        name = f"{r['area']}/{r['task']}" + ("" if r["in_mixture"] else " (not in mixture)")
        lines.append(f"  {name:32} {r['examples']:>9} {r['drawn']:>10} {r['epochs']:>7} "
                     f"{r['tokens']:>12} {r['answer_tokens']:>10}")
    return "\n".join(lines)
