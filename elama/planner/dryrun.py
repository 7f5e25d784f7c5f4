"""--dry-run: every rank of the layout builds its process groups and pipeline-stage layers on the
fake backend (elama.parallel.fake); each build is checked against where the plan puts that rank."""
from __future__ import annotations

from elama.planner.layout import rank_position, stage_layers


def build_problems(plan, build) -> list:
    """What in one rank's build differs from the plan (empty when it matches)."""
    dims, layers = plan.dims, plan.cfg.model.num_layers
    where = rank_position(dims, build.rank)
    got = {"tp": build.tp_rank, "cp": build.cp_rank, "dp": build.dp_rank, "pp": build.pp_rank}
    stage = where["pp"]
    expected = {
        "position": where, "group sizes (tp, pp, dp)": (dims.tp, dims.pp, dims.dp),
        "layers per chunk": stage_layers(dims, layers, stage),
        "parameters": plan.counts.per_stage[stage],
        "embedding on chunk": tuple(stage == 0 and v == 0 for v in range(dims.vpp)),
        "output layer on chunk": tuple(stage == dims.pp - 1 and v == dims.vpp - 1
                                       for v in range(dims.vpp)),
    }
    actual = {"position": got, "group sizes (tp, pp, dp)": build.group_sizes,
              "layers per chunk": build.layers, "parameters": build.params,
              "embedding on chunk": build.pre_process, "output layer on chunk": build.post_process}
    return [f"rank {build.rank}: {key} {actual[key]} but the plan says {value}"
            for key, value in expected.items() if actual[key] != value]


def dry_run_report(plan, ranks=None) -> tuple:
    """(builds, problems) of a fake-backend dry run of `ranks` (default: all)."""
    from elama.parallel.fake import dry_run

    builds = dry_run(plan.cfg, plan.dims, ranks)
    return builds, [p for b in builds for p in build_problems(plan, b)]
