"""Model chunks per (virtual) pipeline stage, wrapped in megatron-core's DDP, and the hooks the
pipeline schedules read from the TransformerConfig."""
from __future__ import annotations

from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed import finalize_model_grads
from megatron.core.transformer.module import Float16Module

from elama.config import ElamaConfig
from elama.model.llama import build_gpt_model
from elama.parallel import setup
from elama.parallel.dims import ParallelDims


def build_model_chunks(cfg: ElamaConfig, tc, dims: ParallelDims) -> list:
    """One GPTModel per virtual stage of this pipeline rank (one when not interleaved); the
    embedding lives in the first chunk of the whole pipeline, the output layer in the last."""
    chunks = []
    for vp in range(dims.vpp):
        vp_stage = vp if dims.interleaved else None
        chunks.append(build_gpt_model(
            cfg.model, tc, dims,
            pre_process=setup.is_first_stage(vp_stage), post_process=setup.is_last_stage(vp_stage),
            vp_stage=vp_stage, pp_rank=setup.pp_rank()))
    if cfg.lora.rank > 0:  # before DDP: its buffers and the optimizer hold trainable params only
        from elama.model.lora import apply_lora

        apply_lora(chunks, cfg.lora, tp=dims.tp)
    return chunks


def build_ddp_config(cfg: ElamaConfig) -> DistributedDataParallelConfig:
    """The one translation of our config into megatron-core's DDP config."""
    p = cfg.parallel
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,  # bf16 grads are reduced and accumulated in fp32
        overlap_grad_reduce=p.overlap_grad_reduce,
        overlap_param_gather=p.overlap_param_gather,
        use_distributed_optimizer=p.distributed_optimizer,
        # Non-finite grads are the trainer's call (skip or stop with the step), not an exception.
        check_for_nan_in_grad=False,
        # The loss is a per-token sum; finalize_model_grads divides by the global token count.
        average_in_collective=False,
    )


def apply_ddp(chunks: list, tc, ddp_config: DistributedDataParallelConfig) -> list:
    """Wrap each chunk (after mixed-precision casting) in megatron DDP; returns the wrapped list.
    Only the first chunk uses bucketing, as in Megatron-LM: later chunks' grads are ready later."""
    wrapped = []
    for i, chunk in enumerate(chunks):
        module = Float16Module(tc, chunk) if tc.bf16 or tc.fp16 else chunk
        wrapped.append(DistributedDataParallel(config=tc, ddp_config=ddp_config, module=module,
                                               disable_bucketing=i > 0))
    return wrapped


def apply_schedule_hooks(tc, wrapped: list, ddp_config: DistributedDataParallelConfig) -> None:
    """Grad/param sync hooks the pipeline schedules call on tc (shared by all chunks)."""
    if ddp_config.overlap_grad_reduce:
        tc.no_sync_func = [c.no_sync for c in wrapped]
        tc.grad_sync_func = [c.start_grad_sync for c in wrapped]
        if len(wrapped) == 1:
            tc.no_sync_func, tc.grad_sync_func = tc.no_sync_func[0], tc.grad_sync_func[0]
    if ddp_config.overlap_param_gather:
        tc.param_sync_func = [c.start_param_sync for c in wrapped]
        if len(wrapped) == 1:
            tc.param_sync_func = tc.param_sync_func[0]
    tc.finalize_model_grads_func = finalize_model_grads
