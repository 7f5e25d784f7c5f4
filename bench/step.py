"""CPU time of one training step (forward, backward, clip, AdamW) at tp=pp=dp=1 through elama
(megatron-core + the CPU device layer, SDPA core attention, fused AdamW) as a ratio to the same step
of transformers' LlamaForCausalLM (attn_implementation="sdpa", torch's fused AdamW, the same
optimizer settings and clip), same config, weights and batch, measured in the same run.

Headline: a body-heavy model (hidden 512, 8 layers, 8 heads in 4 groups, ffn 1536, vocab 8192,
seq 512), where the transformer layers are the work. Second: the embedding-heavy tiny preset
(128256-token vocabulary, hidden 64: the LM head and the loss are the work).

Both run on one intra-op thread and are timed with the thread's CPU time (time.thread_time), so
other processes on a busy machine do not decide the ratio; steps alternate, and the figure is the
median over pairs (an elama step, then a transformers step) of their ratio.
`--profile` prints torch.profiler's top operators of one step of each.

    python bench/step.py [--steps 10] [--profile] [--swiglu-fusion]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")

BODY = ["model.hidden_size=512", "model.num_layers=8", "model.num_attention_heads=8",
        "model.num_query_groups=4", "model.kv_channels=64", "model.ffn_hidden_size=1536",
        "model.vocab_size=8192"]
MODELS = {  # name: (overrides, seq_len_tokens, micro_batch)
    "body": (BODY, 512, 1),
    "embedding_heavy": ([], 128, 2),
}


def build_elama(overrides: list, seq: int, micro_batch: int):
    from elama.config import load_config
    from elama.optim import build_optimizer
    from elama.parallel import parallelize_llama
    from elama.parallel.dims import ParallelDims
    from elama.parallel.shards import apply_full_state_dict, gather_full_state_dict

    cfg = load_config(["model=tiny", "model.precision=fp32", "data=synthetic", *overrides,
                       f"data.seq_len_tokens={seq}", f"train.micro_batch_size={micro_batch}",
                       f"train.global_batch_size={micro_batch}", "optim.warmup_steps=0",
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
    model = LlamaForCausalLM(LlamaConfig(**hf_cfg, attn_implementation="sdpa"))
    state = {}
    for entry in build_name_table(cfg.model):
        state.update(dict(zip(entry.hf, entry.transform.to_hf(weights[entry.megatron],
                                                               cfg.model))))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not [k for k in missing if "rotary" not in k] and not unexpected, (missing, unexpected)
    o = cfg.optim
    # megatron gives norms no weight decay; so does this side
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps, fused=o.fused_adam)
    return model, optimizer


def build_steps(name: str):
    import torch

    from elama.data.synthetic import synthetic_microbatches
    from elama.trainer import train_step

    overrides, seq, mb = MODELS[name]
    cfg, model, optimizer, weights = build_elama(overrides, seq, mb)
    hf_model, hf_optimizer = build_transformers(cfg, weights)
    batch = next(synthetic_microbatches(seed=0, seq_len_tokens=seq,
                                        vocab_size=cfg.model.vocab_size, micro_batch_size=mb,
                                        dp_rank=0, dp=1))

    def elama_step() -> float:
        return train_step(model, optimizer, [iter([batch])], num_microbatches=1,
                          seq_len_tokens=seq, micro_batch_size=mb,
                          clip_grad=cfg.optim.clip_grad).loss

    def hf_step() -> float:
        hf_optimizer.zero_grad(set_to_none=True)
        logits = hf_model(input_ids=batch["tokens"]).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(),
                                                 batch["labels"].view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf_model.parameters(), cfg.optim.clip_grad, foreach=True)
        hf_optimizer.step()
        return loss.item()

    params = sum(w.numel() for w in weights.values())
    return elama_step, hf_step, params, seq * mb


def time_pair(name: str, steps: int, profile: bool) -> float:
    elama_step, hf_step, params, tokens = build_steps(name)
    first = (elama_step(), hf_step())  # also warms both up
    print(f"{name}: {params:,} parameters, {tokens} tokens per step; first-step loss elama "
          f"{first[0]:.6f}, transformers {first[1]:.6f}")
    if abs(first[0] - first[1]) > 1e-4 * abs(first[1]):
        raise SystemExit(f"{name}: the two models disagree on the first loss")
    times = {"elama": [], "transformers": []}
    for _ in range(steps):
        for side, step in (("elama", elama_step), ("transformers", hf_step)):
            start = time.thread_time()
            step()
            times[side].append(time.thread_time() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    for side, t in med.items():
        print(f"  {side:<12} median step {t * 1e3:7.1f} ms thread CPU ({tokens / t:,.0f} "
              f"tokens/s)")
    # Each elama step with the transformers step right after it: a pair shares the machine's
    # state (frequency, cache pressure from other processes), so the median of the pairs' ratios
    # drifts less than the ratio of the medians (printed too).
    ratios = sorted(e / h for e, h in zip(times["elama"], times["transformers"]))
    print(f"  ratio: median of {steps} pairs {statistics.median(ratios):.3f} (range "
          f"{ratios[0]:.3f}-{ratios[-1]:.3f}); of the medians {med['elama'] / med['transformers']:.3f}")
    if profile:
        _profile(name, elama_step, hf_step)
    return statistics.median(ratios)


def _profile(name: str, elama_step, hf_step) -> None:
    from torch.profiler import ProfilerActivity, profile

    for side, step in (("elama", elama_step), ("transformers", hf_step)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(f"--- {name} / {side}: top operators by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables")
    parser.add_argument("--swiglu-fusion", action="store_true",
                        help="elama with model.swiglu_fusion=true (compiles: slow first step)")
    args = parser.parse_args()
    import torch

    from elama.parallel import setup

    torch.set_num_threads(1)  # thread CPU time then covers all of a step's work
    setup.init_single_process(seed=0)
    if args.swiglu_fusion:
        MODELS["body"] = (BODY + ["model.swiglu_fusion=true"], *MODELS["body"][1:])
    body = time_pair("body", args.steps, args.profile)
    embedding_heavy = time_pair("embedding_heavy", args.steps, args.profile)
    print(f"step_time_vs_transformers_sdpa: {body:.3f} (goal <= 1.05)")
    print(f"embedding_heavy_step_time_vs_transformers_sdpa: {embedding_heavy:.3f} "
          "(goal <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
