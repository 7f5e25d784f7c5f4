"""tools/ablate_sft.py, shortened: one area, a few steps; the table has one computed row per run,
the trained runs beat the untrained init on the held-out ShopBench rows, and the plot is written.
The run plan of the full ablation is checked without training."""
from __future__ import annotations

import json

import pytest

from elama.data.sft.ablation import plan_runs
from elama.data.sft.synthetic import AREAS


def test_plan_adds_areas_then_subtasks():
    runs = plan_runs()
    assert [r.axis for r in runs] == ["base"] + ["areas"] * len(AREAS) + ["subtasks"]
    assert [len(r.tasks) for r in runs if r.axis == "areas"] == [2, 4, 6, 8, 10]
    assert runs[-1].tasks == tuple(tasks[0] for tasks in AREAS.values())


@pytest.mark.slow
def test_shortened_ablation_writes_a_computed_table(tmp_path, capsys):
    from tools.ablate_sft import main

    code = main(["--out", str(tmp_path), "--steps", "8", "--per-task", "16",
                 "--heldout-per-task", "4", "--areas", "concepts", "multilingual",
                 "--only", "base", "areas"])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["run"] for r in rows] == ["untrained", "areas=1 (+concepts)",
                                        "areas=2 (+multilingual)"]
    assert rows[0]["final_answer_loss"] is None and all(r["final_answer_loss"] for r in rows[1:])
    assert all(r["overall"] > rows[0]["overall"] for r in rows[1:]), rows
    assert (tmp_path / "ablation.png").stat().st_size > 1000
    table = (tmp_path / "ablation.md").read_text().splitlines()
    assert len(table) == 2 + len(rows)
    with capsys.disabled():
        print("\n" + "\n".join(table))
