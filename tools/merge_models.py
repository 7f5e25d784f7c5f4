"""Merge Hugging Face checkpoints (linear, SLERP, task arithmetic, TIES) into a new HF directory,
or sweep alphas into one directory per alpha plus a table. Thin CLI over elama.merge."""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from elama.convert.hf import CheckpointError, parse_size
from elama.logs import quiet_warnings
from elama.merge import METHODS, MergeError, MergeSpec, merge_checkpoints, sweep, table_cells

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _override(text: str) -> tuple[str, float]:
    pattern, _, value = text.rpartition("=")
    try:
        return pattern, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not PATTERN=ALPHA") from None



def format_table(rows: list[dict]) -> str:
    cells = table_cells(rows)
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in cells)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base", required=True, help="HF directory of the base model")
    p.add_argument("--model", required=True, action="append", dest="models",
                   help="HF directory of a model to merge into the base (repeat for several)")
    p.add_argument("--out", required=True, help="output directory (a sweep puts alpha_<a>/ in it)")
    p.add_argument("--method", choices=METHODS, default="linear",
                   help="linear: (1-alpha)*base + alpha*model (e-Llama's); slerp: spherical "
                        "interpolation per tensor; task_arithmetic: base + alpha * weighted sum of "
                        "(model - base); ties: task arithmetic after trimming each delta to its "
                        "--density largest entries and electing signs (default: linear)")
    how_far = p.add_mutually_exclusive_group(required=True)
    how_far.add_argument("--alpha", type=float, help="how far from the base toward the model(s)")
    how_far.add_argument("--alphas", type=_floats, help="sweep, e.g. 0,0.25,0.5,0.75,1")
    p.add_argument("--weights", type=_floats,
                   help="per-model weights, comma-separated (task_arithmetic, ties; default: 1 each)")
    p.add_argument("--density", type=float, default=1.0,
                   help="TIES: fraction of each delta's entries kept, by magnitude (default: 1.0)")
    p.add_argument("--override", type=_override, action="append", default=[], metavar="PATTERN=ALPHA",
                   help="alpha for tensors matching an fnmatch pattern, e.g. 'model.embed_tokens.*=0'")
    p.add_argument("--dtype", choices=sorted(_DTYPES), help="output dtype (default: the base's)")
    p.add_argument("--max-shard-size", type=parse_size, default=5 * 10**9,
                   help="largest safetensors file, e.g. 5GB, 500MB (default: 5GB)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    quiet_warnings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    spec = MergeSpec(method=args.method, alpha=args.alpha if args.alpha is not None else 0.0,
                     weights=args.weights, density=args.density, overrides=tuple(args.override),
                     out_dtype=_DTYPES.get(args.dtype))
    common = dict(force=args.force, max_shard_bytes=args.max_shard_size, progress=not args.no_progress)
    try:
        if args.alphas is not None:
            rows = sweep(args.base, args.models, args.out, args.alphas, spec, **common)
        else:
            rows = [merge_checkpoints(args.base, args.models, args.out, spec, **common).row()]
    except (MergeError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    from elama.lifetime import exit_process

    exit_process(main())
