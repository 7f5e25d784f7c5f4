"""The paper's 480-rank 70B layout, dry-run on torch's fake process-group backend: every rank
builds megatron's process groups and its pipeline stage's layers on the meta device, and lands
where the plan says (position in the groups, layers per chunk, parameters, embedding/output)."""
from __future__ import annotations

import collections
import dataclasses

import pytest

from elama.config import load_config
from elama.plan import main
from elama.planner.dryrun import build_problems, dry_run_report
from elama.planner.gpus import GPUS
from elama.planner.layout import build_plan, stage_layers


@pytest.fixture(scope="module")
def plan_70b():
    return build_plan(load_config(["experiment=cpt_70b_ecom"]), 480, GPUS["h100-80gb"])


@pytest.mark.slow
def test_every_rank_of_the_paper_70b_layout_builds_what_the_plan_says(plan_70b):
    dims, layers = plan_70b.dims, plan_70b.cfg.model.num_layers
    builds, problems = dry_run_report(plan_70b)
    assert len(builds) == 480 and problems == []
    assert collections.Counter(b.pp_rank for b in builds) == {p: dims.tp * dims.dp
                                                              for p in range(dims.pp)}
    assert sorted(layer for b in builds if b.tp_rank == b.dp_rank == 0
                  for chunk in b.layers for layer in chunk) == list(range(layers))
    assert {b.layers for b in builds if b.pp_rank == 1} == {stage_layers(dims, layers, 1)}


def test_a_build_off_the_plan_is_reported(plan_70b):
    builds, problems = dry_run_report(plan_70b, ranks=[479])
    assert problems == [] and builds[0].pp_rank == 3 and builds[0].post_process[-1]
    moved = dataclasses.replace(builds[0], pp_rank=2, params=builds[0].params - 1)
    found = build_problems(plan_70b, moved)
    assert len(found) == 2 and all(p.startswith("rank 479: ") for p in found)


def test_cli_dry_run_of_the_8b_layout(capsys):
    assert main(["experiment=cpt_8b_ecom", "--nodes", "2", "train.global_batch_size=16",
                 "--dry-run"]) == 0
    assert "dry run (fake process groups, meta device): 16 ranks built their groups and stage " \
           "layers; 0 differences from the plan" in capsys.readouterr().out
