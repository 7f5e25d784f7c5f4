"""The GPU path: Transformer Engine layer spec, FP8, NCCL. Skipped with the reason on machines
without CUDA (tests/conftest.py) or without Transformer Engine (here)."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

TINY = ["model=tiny", "model.vocab_size=512", "data=synthetic", "data.seq_len_tokens=64",
        "train.micro_batch_size=2", "train.global_batch_size=2", "device=cuda"]


@pytest.fixture(scope="module")
def gpu_world():
    pytest.importorskip("transformer_engine", reason="Transformer Engine is not installed: "
                                                     "pip install 'elama[gpu]'")
    from elama.parallel import setup

    setup.init_single_process(device="cuda")
    yield
    setup.destroy_distributed()


def _model(overrides):
    from elama.config import load_config
    from elama.parallel import parallelize_llama
    from elama.parallel.dims import ParallelDims

    cfg = load_config(TINY + overrides)
    return cfg, *parallelize_llama(cfg, ParallelDims(1, 1, 1, 1, 1, 1))


def _loss(cfg, model) -> float:
    from elama.data.synthetic import synthetic_microbatches

    batch = next(synthetic_microbatches(seed=0, seq_len_tokens=cfg.data.seq_len_tokens,
                                        vocab_size=cfg.model.vocab_size, micro_batch_size=2,
                                        dp_rank=0, dp=1))
    batch = {k: v.cuda() for k, v in batch.items()}
    with torch.no_grad():
        losses = model[0](batch["tokens"], None, None, labels=batch["labels"])
    return float(losses.float().mean())


def test_te_spec_loads_local_weights_and_agrees(gpu_world, tmp_path):
    """Checkpoints are spec-independent (local norms are saved under TE's fused names)."""
    from elama import checkpoint

    cfg, local, _ = _model(["model.transformer_impl=local", "model.precision=bf16"])
    checkpoint.save_model(local, tmp_path / "model")
    cfg_te, te_model, _ = _model(["model.transformer_impl=te", "model.precision=bf16"])
    checkpoint.load_model(te_model, tmp_path / "model")
    assert _loss(cfg_te, te_model) == pytest.approx(_loss(cfg, local), rel=2e-2)


def test_fp8_training_step_is_finite(gpu_world):
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        pytest.skip(f"FP8 needs compute capability >= 8.9 (Ada/Hopper); this GPU is {major}.{minor}")
    from elama.data.synthetic import synthetic_microbatches
    from elama.optim import build_optimizer
    from elama.trainer import train_step

    cfg, model, tc = _model(["model.transformer_impl=te", "model.precision=fp8"])
    optimizer = build_optimizer(cfg, model)
    tc.grad_scale_func = optimizer.scale_loss
    data = [synthetic_microbatches(seed=0, seq_len_tokens=64, vocab_size=512,
                                   micro_batch_size=2, dp_rank=0, dp=1)]
    result = train_step(model, optimizer, data, num_microbatches=1, seq_len_tokens=64,
                        micro_batch_size=2, clip_grad=1.0)
    assert result.stepped and torch.isfinite(torch.tensor(result.loss))
