"""elama-ablate-sft: the paper's two instruction-tuning ablations at toy scale on CPU: (a)
capability areas added one at a time, (b) subtasks added within each area, on a synthetic
multi-capability set generated at run time, each run from the same init and scored on held-out
ShopBench rows by elama.eval. Writes ablation.md/.json/.png under --out; a thin CLI over
elama.data.sft.ablation."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

MODEL = ["model=tiny", "model.precision=fp32", "model.num_layers=2", "data.seq_len_tokens=256",
         "train.micro_batch_size=2", "train.global_batch_size=8", "optim.lr=3e-3",
         "optim.min_lr=3e-4", "optim.warmup_steps=3", "train.log_interval=5"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, help="output directory (data, runs, table, plot)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run (default: 60)")
    p.add_argument("--per-task", type=int, default=64, help="training examples per task")
    p.add_argument("--heldout-per-task", type=int, default=12, help="held-out rows per task")
    p.add_argument("--seed", type=int, default=0, help="data seed (the model's is seed=...)")
    p.add_argument("--areas", nargs="+", help="areas in the order (a) adds them (default: all)")
    p.add_argument("--only", nargs="+", help="run names or axes (base, areas, subtasks) to run")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. lora.rank=8")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", module="megatron")
    from elama.config import ConfigError
    from elama.data.sft.ablation import run_ablation, write_table
    from elama.data.sft.synthetic import AREAS

    unknown = sorted(set(args.areas or []) - set(AREAS))
    if unknown or args.steps < 1 or args.per_task < 1 or args.heldout_per_task < 1:
        print(f"elama-ablate-sft: error: areas must be among {list(AREAS)} (got {unknown}); "
              "--steps, --per-task and --heldout-per-task must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        rows = run_ablation(out, MODEL + args.overrides, steps=args.steps, per_task=args.per_task,
                            heldout_per_task=args.heldout_per_task, seed=args.seed,
                            areas=args.areas, only=args.only)
    except (ConfigError, ValueError, OSError) as e:
        print(f"elama-ablate-sft: error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"elama-ablate-sft: error: --only {args.only} matches no run", file=sys.stderr)
        return 2
    for path in write_table(rows, out):
        print(f"wrote {path}")
    print((out / "ablation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
