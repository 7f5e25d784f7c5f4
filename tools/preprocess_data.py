"""elama-preprocess: tokenize .jsonl/.jsonl.gz/.jsonl.zst/.parquet files into megatron-core
indexed datasets (<prefix>.bin/.idx + .manifest.json + .rejects.jsonl); a thin CLI over
elama.data.tokenize.tokenize_files."""
from __future__ import annotations

import argparse
import codecs
import logging
import sys
import warnings

# elama.data.tokenize imports megatron-core, whose import warns about missing GPU libraries:
# filter first, import in main().
DEFAULT_MAX_REJECT_FRACTION = 0.01


def _positive_mib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):  # 0 would make every record its own work unit
        raise argparse.ArgumentTypeError(f"{text!r}: give a size in MiB > 0, e.g. 64")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--input", nargs="+", required=True, help="files or globs, in order")
    p.add_argument("--output-prefix", required=True, help="e.g. data/ecommerce")
    p.add_argument("--text-key", action="append", dest="text_keys",
                   help="record field holding text; repeat to join several in order "
                        "(title, aspects, description). Default: text")
    p.add_argument("--text-separator", default="\\n\\n",
                   help="joins several --text-key fields; backslash escapes allowed")
    p.add_argument("--bos", action=argparse.BooleanOptionalAction, default=True,
                   help="prepend <|begin_of_text|> to each document")
    p.add_argument("--eos", action=argparse.BooleanOptionalAction, default=True,
                   help="append <|end_of_text|> to each document")
    lang = p.add_mutually_exclusive_group()
    lang.add_argument("--language", help="language of every document, e.g. en")
    lang.add_argument("--language-key", help="record field with each document's language")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--merge", action="store_true",
                   help="merge the per-input shards into one dataset at the prefix")
    p.add_argument("--keep-shards", action="store_true", help="with --merge, keep the shards")
    p.add_argument("--max-reject-fraction", type=float, default=DEFAULT_MAX_REJECT_FRACTION,
                   help="fail when more of the documents read are rejected")
    p.add_argument("--chunk-mb", type=_positive_mib,
                   help="MiB of .jsonl per unit of work (default: by size and --workers); "
                        "splits large files across workers, never changes the output")
    p.add_argument("--tokenizer", help="Llama 3 tokenizer.model (default: llama-models' copy)")
    p.add_argument("--task-index", type=int, default=0,
                   help="with --num-tasks: this task makes the shards of inputs i, i+n, ...")
    p.add_argument("--num-tasks", type=int, default=1,
                   help="tasks sharing the inputs (a Slurm array); a final run without these "
                        "writes the dataset from their shards")
    p.add_argument("--accept-truncated", action="store_true",
                   help="keep the lines before the break of a truncated or corrupt compressed "
                        "input (reported as lost lines and bytes) instead of failing")
    p.add_argument("--backend", choices=("fastokens", "tiktoken"), default="fastokens",
                   help="BPE engine: fastokens (~5x faster) or tiktoken (the reference); both "
                        "write the same bytes, and fastokens must match tiktoken on a probe set "
                        "at start or the run refuses")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_chat_arguments(p)
    return p


def _add_chat_arguments(p: argparse.ArgumentParser) -> None:
    chat = p.add_argument_group("--format chat (instruction data, elama.data.sft)")
    p.add_argument("--format", choices=("text", "chat"), default="text",
                   help="text: documents for pretraining; chat: conversations or ShopBench rows "
                        "with answer-token loss masks")
    chat.add_argument("--messages-key", default="messages", help="field with chat messages")
    chat.add_argument("--input-key", default="input_field",
                      help="ShopBench-style prompt field (used when a record has no messages)")
    chat.add_argument("--output-key", default="output_field", help="ShopBench-style answer field")
    chat.add_argument("--system-key", help="field with a system prompt for ShopBench-style rows")
    chat.add_argument("--area-key", default="area", help="field naming the capability area")
    chat.add_argument("--task-key", default="task", help="field naming the task")
    chat.add_argument("--max-seq-len", type=int, help="longest example in tokens")
    chat.add_argument("--truncation", choices=("reject", "truncate"), default="reject",
                      help="an example over --max-seq-len: rejected, or cut (if an answer "
                           "token remains)")


def _run_chat(args) -> None:
    from elama.data.sft.chat import ChatFields
    from elama.data.sft.preprocess import tokenize_chat

    fields = ChatFields(args.messages_key, args.input_key, args.output_key, args.system_key,
                        args.area_key, args.task_key)
    tokenize_chat(args.input, args.output_prefix, fields=fields, max_seq_len=args.max_seq_len,
                  truncation=args.truncation, max_reject_fraction=args.max_reject_fraction,
                  tokenizer_path=args.tokenizer)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="megatron")
    from elama.data.sft.preprocess import TooManyChatRejectsError
    from elama.data.tokenize import TooManyRejectsError, tokenize_files

    try:
        if args.format == "chat":
            _run_chat(args)
            return 0
        tokenize_files(
            args.input, args.output_prefix, text_keys=args.text_keys or ["text"],
            text_separator=codecs.decode(args.text_separator, "unicode_escape"),
            add_bos=args.bos, add_eos=args.eos, language=args.language,
            language_key=args.language_key, workers=args.workers, merge=args.merge,
            keep_shards=args.keep_shards, max_reject_fraction=args.max_reject_fraction,
            chunk_bytes=max(1, int(args.chunk_mb * 2**20)) if args.chunk_mb else None,
            tokenizer_path=args.tokenizer, task_index=args.task_index,
            num_tasks=args.num_tasks, progress=not args.no_progress,
            accept_truncated=args.accept_truncated, backend=args.backend)
    except (TooManyRejectsError, TooManyChatRejectsError) as e:
        print(f"elama-preprocess: {e}", file=sys.stderr)
        return 3
    except (ValueError, OSError, RuntimeError) as e:
        print(f"elama-preprocess: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
