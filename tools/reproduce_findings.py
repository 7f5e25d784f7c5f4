"""Reproduce e-Llama's findings at toy scale on CPU (`make findings`): pretrain a tiny Llama on
general text (the base), continue pretraining it on synthetic e-commerce text with e-Llama's recipe
(50% general replay, peak LR 10% of the base's) and its ablations (no replay; LR 1% and 100%),
export, merge base and recipe over alphas 0..1, evaluate everything (held-out perplexity per
corpus and language, ShopBench-format tasks by log-likelihood) and write REPORT.md with tables,
plots and each finding checked against the numbers. Thin CLI over elama.findings.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="findings_run",
                   help="everything goes here: corpus, data, runs/, hf/, eval/, plots/, REPORT.md")
    p.add_argument("--force", action="store_true", help="replace an existing run directory")
    p.add_argument("--base-steps", type=_positive,
                   help="base pretraining steps (default: conf/experiment/findings_base.yaml)")
    p.add_argument("--cpt-steps", type=_positive,
                   help="steps of each continued pretraining (default: findings_cpt.yaml)")
    p.add_argument("--small-corpus", action="store_true",
                   help="a fraction of the corpus and held-out sets (for quick checks and tests)")
    p.add_argument("--seed", type=int, default=1234, help="training seed (corpus seeds are fixed)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from elama.findings.commands import StudyError
    from elama.findings.corpus import CorpusSizes
    from elama.findings.study import StudyOptions, run_study

    run_dir = Path(args.run_dir).resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        if not args.force:
            print(f"error: {run_dir} exists and is not empty; pass --force to replace it or "
                  "choose another --run-dir", file=sys.stderr)
            return 2
        shutil.rmtree(run_dir)
    small = CorpusSizes(general_en_bytes=200_000, general_multi_docs=300, ecommerce_docs=400,
                        heldout_docs=40, tasks_per_task=10)
    sizes = small if args.small_corpus else CorpusSizes()
    opts = StudyOptions(run_dir=run_dir, base_steps=args.base_steps, cpt_steps=args.cpt_steps,
                        sizes=sizes, seed=args.seed,
                        **({"eval_tokens_per_lang": 256} if args.small_corpus else {}))
    # SIGTERM as an exception, so the running commands are stopped too (run_stage's finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        out = run_study(opts)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"\nreport: {out['report']}")
    for finding in out["findings"]:
        print(finding.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
