"""forward_step and the loss: megatron-core's schedule contract.

`forward_step(data_iterator, model)` returns `(output, loss_fn)`; on the last pipeline stage the
schedule calls `loss_fn(output)`, which returns the summed token loss, the token count and the
values to report. The schedule leaves the sum unnormalised (calculate_per_token_loss) and
finalize_model_grads divides gradients by the global token count, so every layout computes the
gradient of the same mean loss.
"""
from __future__ import annotations

from functools import partial

import torch


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    losses = output_tensor.float().reshape(-1)  # per-token cross entropy, vocab-parallel
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    return loss_sum, num_tokens, {"lm loss": torch.stack([loss_sum.detach(), mask.sum()])}


def _to_device(batch: dict) -> dict:
    """Host batches go to the GPU (asynchronously from pinned memory); on CPU they stay."""
    if not torch.cuda.is_available():
        return batch
    return {k: v.cuda(non_blocking=True) for k, v in batch.items()}


def packing_inputs(batch: dict, model) -> dict:
    """Keyword arguments that keep packed examples apart (SFT batches carry segment_ids): the
    explicit block-diagonal causal mask for the local spec, or PackedSeqParams (cu_seqlens) for
    Transformer Engine's THD attention, whose RoPE also restarts per example. On the local path
    RoPE runs over the sequence positions; with the block mask only offsets within an example
    enter attention, which RoPE makes position-independent."""
    if "segment_ids" not in batch:
        return {}
    from megatron.core.utils import get_attr_wrapped_model

    from elama.data.sft.packing import block_causal_mask, build_packed_seq_params

    if get_attr_wrapped_model(model, "config").transformer_impl == "transformer_engine":
        return {"packed_seq_params": build_packed_seq_params(batch["segment_ids"])}
    return {"attention_mask": block_causal_mask(batch["segment_ids"]),
            "position_ids": batch["position_ids"]}


def forward_step(data_iterator, model):
    """One microbatch through one model chunk. Every chunk reads its own iterator (all hold the
    same batches), so pipeline stages need no data exchange besides activations."""
    batch = _to_device(next(data_iterator))
    kwargs = {"position_ids": None, "attention_mask": None, **packing_inputs(batch, model)}
    output = model(batch["tokens"], kwargs.pop("position_ids"), kwargs.pop("attention_mask"),
                   labels=batch["labels"], **kwargs)
    return output, partial(loss_func, batch["loss_mask"])
