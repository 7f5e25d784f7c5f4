"""train.mode=sft, data.sft and lora.* are validated with every problem named by its override."""
from __future__ import annotations

import pytest

from elama.config import ConfigError, load_config, validate


def _problems(overrides, world=1) -> list[str]:
    try:
        validate(load_config(overrides), world, planning=True)
    except ConfigError as e:
        return e.problems
    return []


def test_sft_presets_compose_and_validate():
    assert _problems(["experiment=sft_tiny_cpu"]) == []
    assert _problems(["experiment=sft_tiny_cpu", "lora.rank=8", "parallel.tp=2"], world=2) == []
    cfg = load_config(["experiment=sft_8b_ecom"])
    assert cfg.lora.rank == 64 and cfg.train.mode == "sft" and len(cfg.data.sft.mixture) == 5


@pytest.mark.parametrize("overrides, needle", [
    (["data=synthetic", "train.mode=sft"], "set both train.mode=sft and data.source=sft"),
    (["experiment=sft_tiny_cpu", "train.mode=pretrain"], "set both train.mode=sft"),
    (["experiment=sft_tiny_cpu", "data.sft.prefix=null"], "needs data.sft.prefix"),
    (["experiment=sft_tiny_cpu", "data.sft.unit=tokens"], "data.sft.unit='tokens'"),
    (["experiment=sft_tiny_cpu", "data.sft.mixture=[{area:concepts,value:0}]"],
     "data.sft.mixture[0] needs an area and a positive value"),
    (["data=synthetic", "lora.rank=-1"], "lora.rank=-1"),
    (["data=synthetic", "lora.rank=4", "lora.targets=[linear_q]"], "lora.targets=['linear_q']"),
    (["data=synthetic", "lora.rank=4", "lora.dropout=1.0"], "lora.dropout=1.0"),
    (["data=synthetic", "lora.rank=4", "model.transformer_impl=te"],
     "set model.transformer_impl=local"),
    (["data=synthetic", "lora.rank=4", "parallel.tp=2", "parallel.sequence_parallel=true"],
     "set parallel.sequence_parallel=false"),
    (["experiment=sft_tiny_cpu", "model.transformer_impl=te", "model.precision=bf16"],
     "set train.micro_batch_size=1"),
])
def test_bad_sft_settings_are_named(overrides, needle):
    world = 2 if "parallel.tp=2" in overrides else 1
    problems = _problems(overrides, world)
    assert any(needle in p for p in problems), problems
