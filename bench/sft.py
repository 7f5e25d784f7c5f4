"""Instruction tuning on CPU: (1) training throughput with packing against padding on a
length-skewed set of examples (the same examples, model and optimizer; real, non-padding tokens
per second of thread CPU time, so a busy machine does not decide the ratio), and (2) the peak
memory of a LoRA training step against a full fine-tuning step of the same model (peak RSS growth
from before the model is built, each measured in its own process).

    python bench/sft.py [--examples 96] [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")

SEQ = 512
THROUGHPUT_MODEL = ["model.hidden_size=128", "model.num_layers=2", "model.ffn_hidden_size=256",
                    "model.vocab_size=2048"]
MEMORY_MODEL = ["model.hidden_size=256", "model.num_layers=4", "model.ffn_hidden_size=768",
                "model.num_attention_heads=8", "model.num_query_groups=4",
                "model.vocab_size=32000"]


def skewed_examples(n: int, seed: int = 0):
    """Mostly short examples, a few near the sequence length (chat data's usual shape)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=3.8, sigma=0.8, size=n).astype(int), 12, SEQ)
    out = []
    for length in lengths:
        ids = rng.integers(1, 2048, length)
        mask = np.zeros(length, dtype=np.int64)
        mask[length // 2:] = 1
        out.append((ids, mask))
    return out


def _build(overrides: list[str], micro_batch: int):
    from elama.config import load_config
    from elama.optim import build_optimizer
    from elama.parallel import parallelize_llama, setup
    from elama.parallel.dims import ParallelDims

    if "MASTER_ADDR" not in os.environ:
        setup.init_single_process()
    cfg = load_config(["model=tiny", "model.precision=fp32", "data=synthetic", *overrides,
                       f"data.seq_len_tokens={SEQ}", f"train.micro_batch_size={micro_batch}",
                       f"train.global_batch_size={micro_batch}", "optim.warmup_steps=0",
                       "optim.schedule=constant"])
    model, tc = parallelize_llama(cfg, ParallelDims(1, 1, 1, 1, 1, 1))
    optimizer = build_optimizer(cfg, model)
    tc.grad_scale_func = optimizer.scale_loss
    return cfg, model, optimizer


def throughput(n_examples: int, micro_batch: int = 4) -> dict:
    """Real tokens per CPU second over one pass of the same examples, packed and padded."""
    from elama.data.sft.dataset import collate
    from elama.data.sft.packing import build_sample, first_fit
    from elama.trainer import train_step

    examples = skewed_examples(n_examples)
    real_tokens = sum(len(e[0]) for e in examples)
    layouts = {
        "packed": [build_sample([examples[i] for i in b], SEQ, 0)
                   for b in first_fit([len(e[0]) for e in examples], SEQ)],
        "padded": [build_sample([e], SEQ, 0) for e in examples],
    }
    _, model, optimizer = _build(THROUGHPUT_MODEL, micro_batch)
    out = {}
    for name, samples in layouts.items():
        samples += samples[:(-len(samples)) % micro_batch]  # whole microbatches (few repeats)
        batches = [collate(samples[i:i + micro_batch]) for i in range(0, len(samples), micro_batch)]
        start = time.thread_time()
        for batch in batches:
            train_step(model, optimizer, [iter([batch])], num_microbatches=1, seq_len_tokens=SEQ,
                       micro_batch_size=micro_batch, clip_grad=1.0)
        seconds = time.thread_time() - start
        out[name] = {"sequences": len(samples), "cpu_s": seconds,
                     "real_tokens_per_s": real_tokens / seconds}
    return out


def memory_child(lora_rank: int, steps: int) -> dict:
    """Peak RSS growth (MiB) of building the model and taking `steps` training steps."""
    from elama.data.synthetic import synthetic_microbatches
    from elama.trainer import train_step

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg, model, optimizer = _build(MEMORY_MODEL + [f"lora.rank={lora_rank}"], 2)
    data = synthetic_microbatches(seed=0, seq_len_tokens=SEQ, vocab_size=cfg.model.vocab_size,
                                  micro_batch_size=2, dp_rank=0, dp=1)
    for _ in range(steps):
        train_step(model, optimizer, [data], num_microbatches=1, seq_len_tokens=SEQ,
                   micro_batch_size=2, clip_grad=1.0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainable = sum(p.numel() for c in model for p in c.parameters() if p.requires_grad)
    return {"lora_rank": lora_rank, "peak_growth_mib": (peak - before) / 1024,
            "trainable_params": trainable}


def memory(steps: int) -> dict:
    out = {}
    for name, rank in (("full", 0), ("lora", 8)):
        proc = subprocess.run([sys.executable, __file__, "--memory-child", str(rank),
                               "--steps", str(steps)], capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"memory child ({name}) failed:\n{proc.stderr[-3000:]}")
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--examples", type=int, default=96)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, args.steps)))
        return 0
    t = throughput(args.examples)
    m = memory(args.steps)
    for name, r in {**t, **{f"memory_{k}": v for k, v in m.items()}}.items():
        print(f"{name}: {json.dumps(r)}")
    speedup = t["packed"]["real_tokens_per_s"] / t["padded"]["real_tokens_per_s"]
    mem_ratio = m["lora"]["peak_growth_mib"] / m["full"]["peak_growth_mib"]
    print(f"packing_vs_padding_tokens_per_s: {speedup:.2f} (goal >= 1.5)")
    print(f"lora_vs_full_step_peak_memory: {mem_ratio:.2f} (goal <= 0.7)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
