"""Plan a layout for N GPUs without having them: validate it, count parameters per rank, estimate
memory per GPU with a fit verdict, step time, MFU and cost; or search for the fastest layouts.

    python -m elama.plan experiment=cpt_70b_ecom --nodes 60 --gpu h100-80gb
    python -m elama.plan model=llama3.1-8b data.seq_len_tokens=8192 --world-size 64 --recommend
    python -m elama.plan experiment=cpt_8b_ecom --nodes 60 --json   (last line: one JSON object)

Exit codes: 0 the layout fits, 4 it does not fit the GPU (with --recommend: nothing fits),
2 invalid layout or config (every problem listed), 1 a --dry-run rank differs from the plan.
"""
from __future__ import annotations

import argparse
import json
import sys

from elama.config import ConfigError, load_config
from elama.planner.gpus import GPUS

EXIT_DOES_NOT_FIT = 4
EXIT_DRY_RUN_MISMATCH = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m elama.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. parallel.tp=8")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--world-size", type=int, help="total GPUs (processes)")
    size.add_argument("--nodes", type=int, help="nodes, with --gpus-per-node")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100-80gb",
                        help="GPU of the fit verdict and the cost estimate (default h100-80gb)")
    parser.add_argument("--recommend", action="store_true",
                        help="search tp, pp, vpp, micro batch and recompute; print the 5 fastest "
                             "layouts that fit")
    parser.add_argument("--json", action="store_true",
                        help="end stdout with one JSON object (fits, memory_gib_per_gpu, ...)")
    parser.add_argument("--dry-run", action="store_true",
                        help="every rank builds its process groups and stage layers on torch's "
                             "fake backend (meta device); checked against the plan")
    return parser


def main(argv=None) -> int:
    from elama.config.help import handle_config_flags
    from elama.logs import quiet_warnings

    quiet_warnings()
    # --help also lists every config field; --cfg job prints the composed config.
    answered = handle_config_flags(list(sys.argv[1:] if argv is None else argv),
                                   _parser().format_help(), "elama.plan")
    if answered is not None:
        return answered
    args = _parser().parse_intermixed_args(argv)  # overrides before or after the options
    world_size = args.world_size or args.nodes * args.gpus_per_node
    gpu = GPUS[args.gpu]
    from elama.planner.calibration import calibrated_efficiency

    try:
        cfg = load_config(args.overrides)
        if args.recommend:
            return _recommend(cfg, world_size, gpu, calibrated_efficiency(), args.json)
        from elama.planner.layout import build_plan

        plan = build_plan(cfg, world_size, gpu)
    except (ConfigError, ValueError) as e:
        print(f"elama.plan: {e}", file=sys.stderr)
        return 2
    from elama.planner.report import format_plan, plan_json

    print(format_plan(plan, calibrated_efficiency()))
    from elama.checkpoint_cost import format_checkpoint_cost

    print(format_checkpoint_cost(cfg, plan.dims, plan.counts.max_per_rank, plan.gpu))
    if args.dry_run and not _dry_run(plan):
        return EXIT_DRY_RUN_MISMATCH
    if args.json:
        print(plan_json(plan))
    return 0 if plan.fits else EXIT_DOES_NOT_FIT


def _dry_run(plan) -> bool:
    from elama.planner.dryrun import dry_run_report

    builds, problems = dry_run_report(plan)
    for problem in problems:
        print(f"elama.plan: dry run: {problem}", file=sys.stderr)
    print(f"dry run (fake process groups, meta device): {len(builds)} ranks built their groups "
          f"and stage layers; {len(problems)} differences from the plan")
    return not problems


def _recommend(cfg, world_size: int, gpu, efficiency: float, as_json: bool) -> int:
    from elama.planner.recommend import format_recommendations, recommend, recommendations_json

    found = recommend(cfg, world_size, gpu, efficiency)
    print(format_recommendations(found, world_size, gpu))
    if as_json:
        print(json.dumps({"fits": bool(found), "recommendations": recommendations_json(found)}))
    return 0 if found else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
    sys.exit(main())
