"""The `tools/evaluate.py` command line: argument parsing and exit codes over elama.eval.runs
(0 done, 2 bad input; a bad input writes no report). Help texts are the user documentation.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

EXIT_BAD_INPUT = 2


def _model_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--model", required=required,
                   help="Hugging Face directory, or elama checkpoint / run directory")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override for elama checkpoints, e.g. parallel.tp=2 (repeatable)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/evaluate.py", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("shopbench", help="ShopBench-format tasks: generate or score predictions")
    s.add_argument("tasks", help="ShopBench JSON-lines file")
    _model_args(s, required=False)
    s.add_argument("--predictions", help="score these raw outputs ({\"output\": ...} per row) "
                                         "instead of generating")
    s.add_argument("--report", help="write the JSON report here")
    s.add_argument("--mc", choices=("generate", "loglik"), default="generate",
                   help="multiple choice by generated answer, or by option log-likelihood")
    s.add_argument("--chat-template", action="store_true",
                   help="prompt through the tokenizer's chat template (instruct models)")
    s.add_argument("--max-new-tokens", action="append", default=[], metavar="TYPE=N",
                   help="new-token cap for a task type, e.g. generation=256 (repeatable)")
    s.add_argument("--save-predictions", help="also write the generated raw outputs here")
    s.add_argument("--multilingual-model", help="local directory of "
                                                "paraphrase-multilingual-MiniLM-L12-v2")
    x = sub.add_parser("perplexity", help="held-out perplexity and bits per byte")
    _model_args(x, required=True)
    x.add_argument("--data", action="append", required=True, metavar="NAME=PATH",
                   help="indexed dataset prefix or .jsonl file (repeatable)")
    x.add_argument("--text-key", action="append", help="JSONL text field(s) (default: text)")
    x.add_argument("--language-key", default="lang", help="JSONL language field")
    x.add_argument("--seq-len", type=int, default=256, help="predicted tokens per window")
    x.add_argument("--max-tokens", type=int, help="predict at most this many tokens per dataset")
    x.add_argument("--report", help="write the JSON report here")
    lm = sub.add_parser("lm-eval", add_help=False,
                        help="lm-evaluation-harness with --model elama registered")
    lm.add_argument("rest", nargs=argparse.REMAINDER)
    from elama.eval.sweep import add_sweep_args

    add_sweep_args(sub.add_parser("merge-sweep", help="merge trade-off: domain vs general"))
    return p


def _finish(report: dict, path: str | None, table: str) -> None:
    if not report:  # not the rank holding results
        return
    if path:
        from elama.eval.shopbench import write_report

        write_report(path, report)
    print(table)


def _shopbench(a) -> None:
    from elama.eval.generate import parse_max_new_tokens
    from elama.eval.metrics import MULTILINGUAL_ENV
    from elama.eval.runs import evaluate_shopbench
    from elama.eval.shopbench import EvalInputError, markdown_report

    if a.multilingual_model:
        os.environ[MULTILINGUAL_ENV] = a.multilingual_model
    try:
        caps = parse_max_new_tokens(a.max_new_tokens)
    except ValueError as e:
        raise EvalInputError(str(e)) from None
    report = evaluate_shopbench(a.tasks, model=a.model, predictions=a.predictions, mc=a.mc,
                                chat=a.chat_template, overrides=a.override,
                                batch_size=a.batch_size, max_new_tokens=caps,
                                save_predictions=a.save_predictions, progress=not a.no_progress)
    _finish(report, a.report, markdown_report(report) if report else "")


def _perplexity(a) -> None:
    from elama.eval.perplexity import markdown_perplexity
    from elama.eval.runs import evaluate_perplexity

    report = evaluate_perplexity(a.model, a.data, overrides=a.override,
                                 text_keys=a.text_key or ["text"], language_key=a.language_key,
                                 seq_len=a.seq_len, max_tokens=a.max_tokens,
                                 batch_size=a.batch_size, progress=not a.no_progress)
    _finish(report, a.report, markdown_perplexity(report) if report else "")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm-eval"]:
        from elama.eval.lm_eval_model import run_cli

        return run_cli(argv[1:])
    a = build_parser().parse_args(argv)
    from elama.checkpoint import CheckpointError
    from elama.config import ConfigError
    from elama.convert.hf import CheckpointError as HFCheckpointError
    from elama.eval.metrics import MetricError
    from elama.eval.shopbench import EvalInputError
    from elama.merge import MergeError

    try:
        if a.command == "shopbench":
            _shopbench(a)
        elif a.command == "perplexity":
            _perplexity(a)
        else:
            from elama.eval.sweep import run_sweep_cli

            run_sweep_cli(a)
    except (EvalInputError, MetricError, CheckpointError, HFCheckpointError, ConfigError,
            MergeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
