"""Final logits of an elama checkpoint (trainer or converted) on token ids from a file, written as
float32 .npy [batch, seq, vocab]. Loads at any tp/pp; thin CLI over elama.scoring.

One process (tp=pp=1):
  python tools/logits.py CKPT tokens.npy logits.npy
Tensor/pipeline parallel, e.g. tp=2 x pp=2 on CPU (gloo and the CPU device layer):
  torchrun --nproc-per-node 4 tools/logits.py CKPT tokens.npy logits.npy parallel.tp=2 parallel.pp=2
Overrides are Hydra's (parallel.*, device=cuda, model.precision=fp32); the architecture comes from
the checkpoint. Tokens: .npy of shape [seq] or [batch, seq], .json list(s), or .txt (one sequence of
space-separated ids per line).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run directory (its latest checkpoint) or iter_NNNNNNN directory")
    p.add_argument("tokens", help="token ids: .npy, .json or .txt")
    p.add_argument("out", help="output .npy of float32 logits [batch, seq, vocab]")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. parallel.tp=2 parallel.pp=2")
    p.add_argument("--micro-batch-size", type=int, default=1,
                   help="sequences per forward pass (default: 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    from elama.logs import quiet_warnings

    quiet_warnings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    from elama.config import ConfigError
    from elama.convert.hf import CheckpointError as HFError
    from elama.checkpoint import CheckpointError
    from elama.parallel import setup
    from elama.parallel.dims import ParallelDims
    from elama.scoring import (ScoringError, build_scoring_config, compute_logits, is_output_rank,
                               load_scoring_model, read_token_ids)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        cfg, iter_dir = build_scoring_config(args.checkpoint, args.overrides, world_size=world)
        tokens = read_token_ids(args.tokens, cfg.model.vocab_size)
    except (ConfigError, CheckpointError, HFError, ScoringError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dims = ParallelDims.from_config(cfg.parallel, world)
    if world == 1 and "MASTER_ADDR" not in os.environ:
        setup.init_single_process(device=cfg.device, seed=cfg.seed)
    else:
        setup.init_distributed(dims, device=cfg.device, seed=cfg.seed)
    try:
        chunks = load_scoring_model(cfg, dims, iter_dir)
        logits = compute_logits(chunks, tokens, micro_batch_size=args.micro_batch_size)
        if is_output_rank():
            np.save(args.out, logits.numpy())
            logging.getLogger("logits").info("wrote %s: logits %s from %s (%s)", args.out,
                                             list(logits.shape), iter_dir, dims.describe())
    finally:
        setup.destroy_distributed()
    return 0


if __name__ == "__main__":
    from elama.lifetime import exit_process

    exit_process(main())
