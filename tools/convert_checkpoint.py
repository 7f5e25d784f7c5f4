"""Convert Llama 3.1 checkpoints between Hugging Face and elama. Thin CLI over elama.convert.

  import: HF directory (safetensors + config.json) -> elama weights checkpoint for
          `checkpoint.init_from=<out>` (loads at any tp/pp)
  export: elama run directory or iter_NNNNNNN -> HF directory (sharded safetensors, config.json,
          generation_config.json, tokenizer files from the Llama 3 tiktoken model)
Examples:
  python tools/convert_checkpoint.py import meta-llama/Llama-3.1-8B ckpt/llama31-8b
  python tools/convert_checkpoint.py export runs/ecom-8b hf/ecom-8b --dtype bfloat16
"""
from __future__ import annotations

import argparse
import logging
import sys

from elama.convert.hf import parse_size

_DTYPE_NAMES = ("bfloat16", "float16", "float32")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="HF directory -> elama weights checkpoint")
    imp.add_argument("src", help="HF Llama directory (config.json, *.safetensors)")
    imp.add_argument("out", help="output directory (a run-directory layout with iter_0000000/)")
    imp.add_argument("--dtype", choices=["bfloat16", "float32"],
                     help="checkpoint dtype (default: the source's; float16 becomes float32)")
    imp.add_argument("--name", help="model name recorded in the checkpoint (default: src's name)")
    exp = sub.add_parser("export", help="elama checkpoint -> HF directory")
    exp.add_argument("src", help="run directory (its latest checkpoint) or iter_NNNNNNN directory")
    exp.add_argument("out", help="output HF directory")
    exp.add_argument("--dtype", choices=_DTYPE_NAMES, help="weights dtype (default: the checkpoint's)")
    exp.add_argument("--tokenizer", help="Llama 3 tokenizer.model (default: the run's, else llama-models')")
    exp.add_argument("--no-tokenizer", action="store_true", help="write no tokenizer files")
    exp.add_argument("--max-shard-size", type=parse_size, default=5 * 10**9, help="e.g. 5GB, 500MB")
    for sp in (imp, exp):
        sp.add_argument("--force", action="store_true", help="replace an existing output directory")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    import torch

    from elama.checkpoint import CheckpointError
    from elama.convert.export_hf import export_hf
    from elama.convert.hf import CheckpointError as HFCheckpointError
    from elama.convert.import_hf import import_hf
    from elama.scoring import ScoringError

    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        if args.command == "import":
            r = import_hf(args.src, args.out, dtype=dtype, name=args.name,
                          force=args.force, progress=not args.no_progress)
            print(f"imported {r.tensors_read} HF tensors ({r.tensors_ignored} ignored buffers) into "
                  f"{r.params_written} parameters: {r.out_dir} (use checkpoint.init_from={r.out_dir})")
        else:
            r = export_hf(args.src, args.out, dtype=dtype,
                          tokenizer_path=args.tokenizer, with_tokenizer=not args.no_tokenizer,
                          max_shard_bytes=args.max_shard_size, force=args.force,
                          progress=not args.no_progress)
            print(f"exported {r.tensors_written} tensors ({r.bytes_written / 1e9:.3f} GB) to "
                  f"{r.out_dir}: {', '.join(r.files)}")
    except (CheckpointError, HFCheckpointError, ScoringError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
