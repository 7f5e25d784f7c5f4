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


def forward_step(data_iterator, model):
    """One microbatch through one model chunk. Every chunk reads its own iterator (all hold the
    same batches), so pipeline stages need no data exchange besides activations."""
    batch = _to_device(next(data_iterator))
    output = model(batch["tokens"], None, None, labels=batch["labels"])
    return output, partial(loss_func, batch["loss_mask"])
