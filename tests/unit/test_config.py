"""Config composition (Hydra compose of conf/) and validation (every problem at once)."""
from __future__ import annotations

import pytest

from elama.config import ConfigError, ElamaConfig, load_config, validate


def test_compose_presets_into_typed_config():
    cfg = load_config(["model=llama3.1-8b", "parallel.tp=4", "optim=wsd", "data=synthetic"])
    assert isinstance(cfg, ElamaConfig)
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size) == (32, 4096, 14336)
    assert (m.num_attention_heads, m.num_query_groups, m.vocab_size) == (32, 8, 128256)
    assert (m.rotary_base, m.rope_scaling_factor, m.norm_epsilon) == (500000, 8.0, 1e-5)
    assert not m.tie_embeddings
    assert cfg.parallel.tp == 4 and cfg.optim.schedule == "wsd" and cfg.data.source == "synthetic"


def test_seventy_b_preset():
    m = load_config(["model=llama3.1-70b"]).model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads) == (
        80, 8192, 28672, 64)
    assert m.num_query_groups == 8 and m.head_dim == 128


@pytest.mark.parametrize("override,needle", [
    ("model.no_such_field=1", "no_such_field"),
    ("parallel.tp=two", "parallel.tp"),
    ("model=llama9", "llama9"),
])
def test_compose_errors_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config([override])
    assert needle in str(e.value)


def test_validate_lists_every_problem_with_its_override():
    cfg = load_config(["model=llama3.1-70b", "parallel.tp=3", "parallel.pp=7", "parallel.vpp=3",
                       "train.global_batch_size=10", "data=synthetic", "data.seq_len_tokens=200000",
                       "optim.min_lr=1.0", "parallel.sequence_parallel=true"])
    with pytest.raises(ConfigError) as e:
        validate(cfg, world_size=480, planning=True)
    text = str(e.value)
    for needle in ("world_size=480 is not divisible by tp*pp*cp=3*7*1=21",
                   "model.num_attention_heads=64 is not divisible by tp=3",
                   "model.num_query_groups=8 is not divisible by tp=3",
                   "model.num_layers=80 is not divisible by pp*vpp=7*3=21",
                   "data.seq_len_tokens=200000 exceeds", "optim.min_lr=1.0"):
        assert needle in text, needle
    assert len(e.value.problems) >= 6


def test_batch_and_interleaving_rules():
    cfg = load_config(["data=synthetic", "parallel.pp=2", "parallel.vpp=2",
                       "train.global_batch_size=6", "train.micro_batch_size=2"])
    with pytest.raises(ConfigError) as e:
        validate(cfg, world_size=2)
    assert "microbatches per step (3) divisible by pp=2" in str(e.value)
    cfg.train.global_batch_size = 8
    validate(cfg, world_size=2)  # 4 microbatches: fine


def test_run_inputs_checked_only_when_running():
    cfg = load_config([])  # no data named
    validate(cfg, world_size=1, planning=True)
    with pytest.raises(ConfigError, match="data.train_blend is empty"):
        validate(cfg, world_size=1)


def test_te_and_fp8_refused_on_a_cpu_machine():
    cfg = load_config(["data=synthetic", "model.transformer_impl=te", "model.precision=fp8"])
    validate(cfg, world_size=1, planning=True)  # fine for a GPU cluster
    with pytest.raises(ConfigError) as e:
        validate(cfg, world_size=1)
    assert "Transformer Engine" in str(e.value) and "device=cpu" in str(e.value)
    cfg = load_config(["data=synthetic", "model.precision=fp8"])
    with pytest.raises(ConfigError, match="model.transformer_impl=te"):
        validate(cfg, world_size=1, planning=True)


def test_rope_factors_megatron_cannot_represent_are_refused():
    cfg = load_config(["data=synthetic", "model.rope_high_freq_factor=2.0"])
    with pytest.raises(ConfigError, match="rope_high_freq_factor=2.0"):
        validate(cfg, world_size=1)


def test_extra_checks_join_the_report():
    cfg = load_config(["data=synthetic", "parallel.tp=3"])
    with pytest.raises(ConfigError) as e:
        validate(cfg, world_size=3, extra_checks=[lambda c, w: ["data prefix x is missing"]])
    assert "data prefix x is missing" in e.value.problems
    assert any("tp=3" in p for p in e.value.problems)


@pytest.mark.parametrize("override", ["+parallel.tpp=2", "parallel.tpp=2", "++parallel.tpp=2"])
def test_unknown_field_is_refused_with_a_suggestion(override):
    with pytest.raises(ConfigError) as e:
        load_config(["data=synthetic", override])
    (problem,) = e.value.problems
    assert "parallel.tpp is not a field of the config" in problem
    assert "did you mean parallel.tp" in problem and "--help" in problem


def test_every_unknown_field_is_listed_at_once_even_inside_lists():
    with pytest.raises(ConfigError) as e:
        load_config(["modle.num_layers=2", "train.trainsteps=3", "+seedd=1"])
    text = str(e.value)
    assert len(e.value.problems) == 3
    for needle in ("did you mean model.num_layers", "did you mean train.train_steps",
                   "did you mean seed"):
        assert needle in text, needle
    with pytest.raises(ConfigError, match=r"wieght is not a field.*data.train_blend\[\].weight"):
        load_config(["data.train_blend=[{prefix:a,wieght:1}]"])


@pytest.mark.parametrize("override,needle", [
    ("parallel.tp=two", "parallel.tp=two: could not convert 'two' to int"),
    ("train.train_steps=1.5", "could not convert '1.5' to int"),
    ("model.kv_channels=abc", "could not convert 'abc' to int or null"),
    ("parallel.sequence_parallel=maybe", "could not convert 'maybe' to bool (true or false)"),
    ("optim.lr=fast", "could not convert 'fast' to float"),
])
def test_type_errors_keep_their_cause(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config([override])
    assert needle in str(e.value)


def test_known_fields_groups_and_list_entries_compose():
    cfg = load_config(["experiment=cpt_tiny_cpu", "data.train_blend=[{prefix:a,weight:2}]",
                       "++model.name=x", "logging.wandb_project=demo"])
    assert cfg.data.train_blend[0].weight == 2.0 and cfg.model.name == "x"
    assert cfg.logging.wandb_mode == "offline"
