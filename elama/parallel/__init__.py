"""Parallelism for elama: layout (dims), process groups (setup), the CPU device layer (cpu),
model chunks and DDP (wrap), full-tensor gather/scatter (shards), composed by parallelize_llama."""
from __future__ import annotations


def parallelize_llama(cfg, dims):
    """Llama 3.1 chunks for this rank, tensor/pipeline split and DDP-wrapped, like torchtitan's
    parallelize_llama: TransformerConfig + spec, one GPTModel per (virtual) stage, DDP, hooks.
    Process groups must be up (elama.parallel.setup.init_distributed). Returns (chunks, tc)."""
    from elama.model.llama import transformer_config
    from elama.parallel.wrap import apply_ddp, apply_schedule_hooks, build_ddp_config, build_model_chunks

    tc = transformer_config(cfg.model, dims, device=cfg.device, ddp=True)
    ddp_config = build_ddp_config(cfg)
    chunks = apply_ddp(build_model_chunks(cfg, tc, dims), tc, ddp_config)
    apply_schedule_hooks(tc, chunks, ddp_config)
    return chunks, tc
