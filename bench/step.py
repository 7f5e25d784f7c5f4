"""CPU time of one training step (forward, backward, optimizer) of the tiny Llama at tp=pp=dp=1
through elama (megatron-core + the CPU device layer), as a ratio to the same step of transformers'
LlamaForCausalLM with the same config and weights, measured in the same run.

    python bench/step.py [--steps 20] [--seq 128] [--micro-batch 2]

The two are timed alternately, step by step, and compared by their medians (this machine is
shared and noisy). Both start from the same weights and batch, so their first losses must agree.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "2")


def build_elama(args):
    from elama.config import load_config
    from elama.optim import build_optimizer
    from elama.parallel import parallelize_llama, setup
    from elama.parallel.dims import ParallelDims
    from elama.parallel.shards import apply_full_state_dict, gather_full_state_dict

    setup.init_single_process(seed=0)
    cfg = load_config(["model=tiny", "model.precision=fp32", "data=synthetic",
                       f"data.seq_len_tokens={args.seq}", f"train.micro_batch_size={args.micro_batch}",
                       f"train.global_batch_size={args.micro_batch}", "optim.warmup_steps=0",
                       "optim.schedule=constant", "optim.weight_decay=0.1", "optim.clip_grad=1.0"])
    model, tc = parallelize_llama(cfg, ParallelDims(1, 1, 1, 1, 1, 1))
    weights = gather_full_state_dict(model)  # megatron's own initialisation
    apply_full_state_dict(model, weights)
    optimizer = build_optimizer(cfg, model)
    tc.grad_scale_func = optimizer.scale_loss
    return cfg, model, optimizer, weights


def build_transformers(cfg, weights):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from elama.convert.mapping import build_name_table, hf_config_from_model

    hf_cfg = hf_config_from_model(cfg.model, torch.float32)
    hf_cfg.pop("architectures", None)
    model = LlamaForCausalLM(LlamaConfig(**hf_cfg, attn_implementation="eager"))
    state = {}
    for entry in build_name_table(cfg.model):
        parts = entry.transform.to_hf(weights[entry.megatron], cfg.model)
        state.update(dict(zip(entry.hf, parts)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not [k for k in missing if "rotary" not in k] and not unexpected, (missing, unexpected)
    o = cfg.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.adam_beta1, o.adam_beta2),
                                  eps=o.adam_eps, weight_decay=o.weight_decay)
    return model, optimizer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=2)
    args = parser.parse_args()
    import torch

    from elama.data.synthetic import synthetic_microbatches
    from elama.trainer import train_step

    cfg, model, optimizer, weights = build_elama(args)
    hf_model, hf_optimizer = build_transformers(cfg, weights)
    batch = next(synthetic_microbatches(seed=0, seq_len_tokens=args.seq, vocab_size=cfg.model.vocab_size,
                                        micro_batch_size=args.micro_batch, dp_rank=0, dp=1))

    def elama_step() -> float:
        return train_step(model, optimizer, [iter([batch])], num_microbatches=1,
                          seq_len_tokens=args.seq, micro_batch_size=args.micro_batch,
                          clip_grad=cfg.optim.clip_grad).loss

    def hf_step() -> float:
        hf_optimizer.zero_grad(set_to_none=True)
        logits = hf_model(input_ids=batch["tokens"]).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(),
                                                 batch["labels"].view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf_model.parameters(), cfg.optim.clip_grad)
        hf_optimizer.step()
        return loss.item()

    first = (elama_step(), hf_step())
    print(f"first-step loss: elama {first[0]:.6f}, transformers {first[1]:.6f}")
    assert abs(first[0] - first[1]) < 1e-4 * abs(first[1]), "the two models disagree"
    times = {"elama": [], "transformers": []}
    for _ in range(args.steps):
        for name, step in (("elama", elama_step), ("transformers", hf_step)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = args.seq * args.micro_batch
    print(f"model: tiny ({sum(w.numel() for w in weights.values()):,} parameters), "
          f"{tokens} tokens per step, {torch.get_num_threads()} threads, {args.steps} steps each")
    for name, t in med.items():
        print(f"{name}: median step {t * 1e3:.1f} ms ({tokens / t:,.0f} tokens/s)")
    print(f"step_time_vs_transformers: {med['elama'] / med['transformers']:.3f} (goal <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
