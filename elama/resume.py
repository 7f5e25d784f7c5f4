"""Whether a run may resume from (or initialise from) the checkpoint it finds, checked before any
process group starts: the same model architecture, and the same data blend unless data.replan."""
from __future__ import annotations

import dataclasses

from elama import checkpoint
from elama.config import ElamaConfig, ModelConfig

# Fields that change the weights' shapes or meaning; the rest (precision, recompute, impl) may
# differ between the run that saved and the run that loads.
ARCHITECTURE = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                "num_query_groups", "kv_channels", "vocab_size", "rotary_base", "rope_scaling",
                "rope_scaling_factor", "norm_epsilon", "tie_embeddings")


def architecture_problems(model: ModelConfig, saved: dict, where: str) -> list[str]:
    mine = {**dataclasses.asdict(model), "kv_channels": model.head_dim}
    saved = {**saved, "kv_channels": saved.get("kv_channels") or
             saved["hidden_size"] // saved["num_attention_heads"]}
    return [f"model.{f}={mine[f]} but {where} has {saved.get(f)}" for f in ARCHITECTURE
            if mine[f] != saved.get(f)]


def check_resume(cfg: ElamaConfig, world_size: int = 0) -> list[str]:
    """Problems with the checkpoint this run would start from (for validate's extra_checks)."""
    try:
        resume = checkpoint.find_resume(cfg.checkpoint.run_dir)
        if resume is None:
            if not cfg.checkpoint.init_from:
                return []
            source = checkpoint.resolve(cfg.checkpoint.init_from)
            return architecture_problems(cfg.model, checkpoint.read_meta(source)["model"],
                                         f"checkpoint.init_from={cfg.checkpoint.init_from}")
        meta = checkpoint.read_meta(resume)
    except checkpoint.CheckpointError as e:
        return [str(e)]
    problems = architecture_problems(cfg.model, meta["model"], f"the checkpoint {resume}")
    problems += _data_problems(cfg, meta.get("data", {}), resume)
    saved_parallel = meta.get("config", {}).get("parallel", {})
    if cfg.parallel.distributed_optimizer and saved_parallel.get("distributed_optimizer") is False:
        problems.append(f"parallel.distributed_optimizer=true, but {resume} was saved by the plain "
                        "optimizer, whose state holds no fp32 master weights to shard: resume "
                        "with parallel.distributed_optimizer=false")
    return problems


def _data_problems(cfg: ElamaConfig, saved: dict, resume) -> list[str]:
    if cfg.data.replan or not saved:
        return []
    from elama.data.blend import blend_fingerprint, load_blend

    current = {"source": cfg.data.source, "seq_len_tokens": cfg.data.seq_len_tokens, "blend": []}
    if cfg.data.source == "blend":
        sources, problems = load_blend(cfg.data.train_blend, "data.train_blend")
        if problems:
            return []  # reported by the data check
        current["blend"] = blend_fingerprint(sources)
    changed = [k for k in ("source", "seq_len_tokens", "blend") if saved.get(k) != current[k]]
    if not changed:
        return []
    return [f"the data changed since {resume} ({', '.join(changed)}: was {[saved.get(k) for k in changed]}, "
            f"now {[current[k] for k in changed]}); resuming would silently re-plan the data: set "
            "data.replan=true to accept it, or use another checkpoint.run_dir"]
