"""Whether a run may resume from (or initialise from) the checkpoint it finds, checked before any
process group starts: a tracker that names a complete checkpoint (or no checkpoint at all), the
same model architecture and optimizer kind, and the same data blend unless data.replan. Every
refusal names the newest intact checkpoint and the command that resumes from it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

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


def newest_intact(run_dir: str | Path) -> tuple[int, Path] | None:
    """(step, directory) of the newest committed-looking checkpoint in run_dir whose metadata
    reads and whose weights are there (a .tmp one, or one half-deleted by keep_last, is not)."""
    run_dir = Path(run_dir)
    found = []
    for path in run_dir.glob("iter_*") if run_dir.is_dir() else []:
        step = path.name[len("iter_"):]
        if not step.isdigit() or not (path / "model" / "metadata.json").is_file():
            continue
        try:
            checkpoint.read_meta(path)
        except checkpoint.CheckpointError:
            continue
        found.append((int(step), path))
    return max(found) if found else None


def resume_hint(run_dir: str | Path) -> str:
    """How to go on: resume from the newest intact checkpoint (by pointing the tracker at it), or
    start over elsewhere; nothing in run_dir is changed by elama."""
    tracker = Path(run_dir) / checkpoint.TRACKER
    intact = newest_intact(run_dir)
    if intact is None:
        return (f"no intact checkpoint in {run_dir}: start over with another checkpoint.run_dir "
                "(or move this one away)")
    step, path = intact
    return (f"the newest intact checkpoint is {path} (step {step}); to resume from it run "
            f"`echo {step} > {tracker}` and start the same command again; to start over, set "
            "another checkpoint.run_dir")


def _tracker_problems(run_dir: str | Path) -> list[str]:
    """A tracker that is unreadable, or absent while checkpoints remain: starting at step 0 would
    overwrite them (and keep_last delete the older ones), so refuse and touch nothing."""
    try:
        tracked = checkpoint.read_tracker(run_dir)
    except (checkpoint.CheckpointError, OSError) as e:
        return [f"checkpoint.run_dir={run_dir}: {e}; {resume_hint(run_dir)}"]
    if tracked is not None or newest_intact(run_dir) is None:
        return []
    return [f"checkpoint.run_dir={run_dir} holds checkpoints but no {checkpoint.TRACKER} (it names "
            "the checkpoint to resume from); starting at step 0 would overwrite them. "
            + resume_hint(run_dir)]


def check_resume(cfg: ElamaConfig, world_size: int = 0) -> list[str]:
    """Problems with the checkpoint this run would start from (for validate's extra_checks)."""
    run_dir = cfg.checkpoint.run_dir
    tracker_problems = _tracker_problems(run_dir)
    if tracker_problems:
        return tracker_problems
    try:
        resume = checkpoint.find_resume(run_dir)
        if resume is not None:
            meta = checkpoint.read_meta(resume)
    except checkpoint.CheckpointError as e:
        return [f"{e}; {resume_hint(run_dir)}"]
    if resume is None:
        if not cfg.checkpoint.init_from:
            return []
        try:
            source = checkpoint.resolve(cfg.checkpoint.init_from)
            return architecture_problems(cfg.model, checkpoint.read_meta(source)["model"],
                                         f"checkpoint.init_from={cfg.checkpoint.init_from}")
        except checkpoint.CheckpointError as e:
            return [str(e)]
    problems = architecture_problems(cfg.model, meta["model"], f"the checkpoint {resume}")
    problems += _data_problems(cfg, meta.get("data", {}), resume)
    saved_parallel = meta.get("config", {}).get("parallel", {})
    if cfg.parallel.distributed_optimizer and saved_parallel.get("distributed_optimizer") is False:
        problems.append(f"parallel.distributed_optimizer=true, but {resume} was saved by the plain "
                        "optimizer, whose state holds no fp32 master weights to shard: resume "
                        "with parallel.distributed_optimizer=false")
    if not cfg.parallel.distributed_optimizer and saved_parallel.get("distributed_optimizer"):
        # megatron's plain optimizer cannot read the distributed one's sharded param groups
        # (KeyError 'pre_wd_mult' deep inside its load)
        problems.append(f"parallel.distributed_optimizer=false, but {resume} was saved by the "
                        "distributed optimizer, whose state the plain optimizer cannot load: "
                        "resume with parallel.distributed_optimizer=true (any tp/pp/dp layout), "
                        f"or take its weights only with checkpoint.init_from={resume} in a new "
                        "checkpoint.run_dir")
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
