"""Convert Llama 3.1 checkpoints between Hugging Face and elama. Thin CLI over elama.convert.

  import: HF directory (safetensors + config.json) -> elama weights checkpoint for
          `checkpoint.init_from=<out>` (loads at any tp/pp)
  export: elama run directory or iter_NNNNNNN -> HF directory (sharded safetensors, config.json,
          generation_config.json, tokenizer files from the Llama 3 tiktoken model)
Examples:
  python tools/convert_checkpoint.py import /models/Llama-3.1-8B ckpt/llama31-8b
The source of an import is a local directory, never a Hub id: download it first, e.g.
  huggingface-cli download meta-llama/Llama-3.1-8B --local-dir /models/Llama-3.1-8B
  python tools/convert_checkpoint.py export runs/ecom-8b hf/ecom-8b --dtype bfloat16
A LoRA run exports merged (default), or as its base plus an HF PEFT adapter directory:
  python tools/convert_checkpoint.py export runs/sft-8b hf/sft-8b-base --lora base
  python tools/convert_checkpoint.py export runs/sft-8b hf/sft-8b-adapter --peft hf/sft-8b-base
The plan of an import's writes, checked on the meta device, nothing read or written:
  python tools/convert_checkpoint.py import --plan llama3.1-70b
"""
from __future__ import annotations

import argparse
import logging
import sys

from elama.convert.hf import parse_size
from elama.logs import quiet_warnings

_DTYPE_NAMES = ("bfloat16", "float16", "float32")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="HF directory -> elama weights checkpoint")
    imp.add_argument("src", help="local HF Llama directory (config.json, *.safetensors), "
                                 "e.g. /models/Llama-3.1-8B")
    imp.add_argument("out", nargs="?", help="output directory (a run-directory layout with "
                                            "iter_0000000/)")
    imp.add_argument("--plan", action="store_true", help="print the plan of writes of SRC (an HF "
                     "directory or a model preset, conf/model/<name>.yaml) and exit")
    imp.add_argument("--dtype", choices=["bfloat16", "float32"],
                     help="checkpoint dtype (default: the source's; float16 becomes float32)")
    imp.add_argument("--name", help="model name recorded in the checkpoint (default: src's name)")
    exp = sub.add_parser("export", help="elama checkpoint -> HF directory")
    exp.add_argument("src", help="run directory (its latest checkpoint) or iter_NNNNNNN directory")
    exp.add_argument("out", help="output HF directory")
    exp.add_argument("--dtype", choices=_DTYPE_NAMES, help="weights dtype (default: the checkpoint's)")
    exp.add_argument("--tokenizer", help="Llama 3 tokenizer.model (default: the run's, else llama-models')")
    exp.add_argument("--no-tokenizer", action="store_true", help="write no tokenizer files")
    exp.add_argument("--max-shard-size", type=parse_size, default=5 * 10**9,
                     help="largest safetensors file, e.g. 5GB, 500MB (default: 5GB)")
    exp.add_argument("--lora", choices=("merge", "base"), default="merge",
                     help="a LoRA checkpoint: W + (alpha/r) B A (merge) or the base alone")
    exp.add_argument("--peft", metavar="BASE", help="write the LoRA adapters as an HF PEFT "
                     "adapter directory for the exported base BASE (its path or Hub id)")
    for sp in (imp, exp):
        sp.add_argument("--force", action="store_true", help="replace an existing output directory")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    quiet_warnings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)  # its INFO lines describe its imports
    args = build_parser().parse_args(argv)
    import torch

    from elama.checkpoint import CheckpointError
    from elama.convert.export_hf import export_hf
    from elama.convert.hf import CheckpointError as HFCheckpointError
    from elama.convert.import_hf import import_hf
    from elama.scoring import ScoringError

    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        if args.command == "import" and args.plan:
            print(_import_plan(args.src, dtype or torch.bfloat16))
        elif args.command == "import" and args.out is None:
            print("error: import needs an output directory (or --plan)", file=sys.stderr)
            return 2
        elif args.command == "import":
            r = import_hf(args.src, args.out, dtype=dtype, name=args.name,
                          force=args.force, progress=not args.no_progress)
            print(f"imported {r.tensors_read} HF tensors ({r.tensors_ignored} ignored buffers) into "
                  f"{r.params_written} parameters: {r.out_dir} (use checkpoint.init_from={r.out_dir})")
        elif args.peft:
            from elama.convert.peft import export_peft

            config = export_peft(args.src, args.out, base_model_name_or_path=args.peft,
                                 dtype=dtype, force=args.force)
            print(f"exported a rank-{config['r']} PEFT adapter for {args.peft} to {args.out}")
        else:
            r = export_hf(args.src, args.out, dtype=dtype,
                          tokenizer_path=args.tokenizer, with_tokenizer=not args.no_tokenizer,
                          max_shard_bytes=args.max_shard_size, force=args.force,
                          progress=not args.no_progress, lora=args.lora)
            print(f"exported {r.tensors_written} tensors ({r.bytes_written / 1e9:.3f} GB) to "
                  f"{r.out_dir}: {', '.join(r.files)}")
    except (CheckpointError, HFCheckpointError, ScoringError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _import_plan(src: str, dtype) -> str:
    from pathlib import Path

    from elama.config import ConfigError, load_config
    from elama.convert.hf import CheckpointError, read_json
    from elama.convert.import_hf import plan_import
    from elama.convert.mapping import model_config_from_hf

    if Path(src).is_dir():
        model = model_config_from_hf(read_json(Path(src) / "config.json"), name=Path(src).name,
                                     where=str(Path(src) / "config.json"))
    else:
        try:
            model = load_config([f"model={src}"]).model
        except ConfigError as e:
            raise CheckpointError(f"{src}: neither an HF directory nor a model preset "
                                  f"(conf/model/<name>.yaml): {e}") from None
    return plan_import(model, dtype)


if __name__ == "__main__":
    from elama.lifetime import exit_process

    exit_process(main())
