"""The HF <-> megatron name table and transforms (inverse pairs, GQA layout, completeness against
transformers and megatron's spec), config.json checks, and the refusals that come before any
tensor moves. No process groups."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from elama import checkpoint
from elama.config import ConfigError, ModelConfig, load_config
from elama.convert.hf import CheckpointError
from elama.convert.mapping import (GATE_UP, LAYER_RULES, QKV, TRANSFORMS, ConversionError,
                                   build_name_table, hf_config_from_model, hf_tensor_shapes,
                                   model_config_from_hf)
from elama.scoring import ScoringError, build_scoring_config, read_token_ids
from tests.hf_fixtures import make_tiny_hf_llama

LLAMA31_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}
# meta-llama/Llama-3.1-8B's config.json as released.
META_8B = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
           "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
           "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
           "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
           "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
           "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": LLAMA31_ROPE,
           "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
           "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256}
META_70B = {**META_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
            "num_hidden_layers": 80}
ARCH_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
               "num_query_groups", "head_dim", "vocab_size", "max_seq_len_tokens", "rotary_base",
               "rope_scaling", "rope_scaling_factor", "rope_low_freq_factor",
               "rope_high_freq_factor", "rope_original_max_position_embeddings", "norm_epsilon",
               "tie_embeddings")
LAYOUTS = [(4, 2, 16), (4, 4, 8), (8, 1, 8), (6, 3, 4)]  # (heads, groups, head_dim): GQA, MHA, MQA


def _model(heads: int, groups: int, head_dim: int, **kw) -> ModelConfig:
    return ModelConfig(hidden_size=24, num_attention_heads=heads, num_query_groups=groups,
                       kv_channels=head_dim, ffn_hidden_size=40, **kw)


@pytest.mark.parametrize("heads,groups,head_dim", LAYOUTS)
def test_transforms_are_inverse_pairs(heads, groups, head_dim):
    m = _model(heads, groups, head_dim)
    g = torch.Generator().manual_seed(0)
    hf_sets = {QKV.name: [torch.randn(heads * head_dim, 24, generator=g),
                          torch.randn(groups * head_dim, 24, generator=g),
                          torch.randn(groups * head_dim, 24, generator=g)],
               GATE_UP.name: [torch.randn(40, 24, generator=g), torch.randn(40, 24, generator=g)]}
    hf_sets["identity"] = [torch.randn(7, 24, generator=g)]
    for transform in TRANSFORMS:
        parts = hf_sets[transform.name]
        fused = transform.to_megatron(parts, m)
        back = transform.to_hf(fused, m)
        assert len(back) == len(parts)
        assert all(torch.equal(a, b) for a, b in zip(back, parts)), transform.name
        assert torch.equal(transform.to_megatron(list(back), m), fused), transform.name


@pytest.mark.parametrize("heads,groups,head_dim", LAYOUTS)
def test_qkv_rows_follow_megatrons_per_group_layout(heads, groups, head_dim):
    """Each row labelled by (projection, head, dim) lands where megatron's attention reads it:
    per query group g, its heads_per_group query heads, then key head g, then value head g."""
    m = _model(heads, groups, head_dim)

    def labelled(kind: int, n_heads: int) -> torch.Tensor:
        rows = [[kind, h, d] for h in range(n_heads) for d in range(head_dim)]
        return torch.tensor(rows, dtype=torch.float64)

    fused = QKV.to_megatron([labelled(0, heads), labelled(1, groups), labelled(2, groups)], m)
    per_group = heads // groups
    expected = []
    for grp in range(groups):
        expected += [[0, grp * per_group + j, d] for j in range(per_group) for d in range(head_dim)]
        expected += [[1, grp, d] for d in range(head_dim)] + [[2, grp, d] for d in range(head_dim)]
    assert fused.tolist() == expected


@pytest.mark.parametrize("tied", [False, True])
def test_name_table_covers_transformers_llama_exactly(tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**cfg))
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if tied:
        want.pop("lm_head.weight")  # the embedding, saved once
    m = model_config_from_hf({**cfg, "architectures": ["LlamaForCausalLM"]})
    table = build_name_table(m)
    assert hf_tensor_shapes(table) == want
    megatron = [e.megatron for e in table]
    assert len(set(megatron)) == len(megatron) == 2 + 6 * 3 + (0 if tied else 1)


def test_te_names_are_what_megatrons_local_spec_saves_under():
    """The local spec maps its norm names onto the TE spec's fused-norm names when saving, so a
    checkpoint has one set of keys whatever the spec: the table's te names must be that map."""
    from elama.model.llama import layer_spec

    keys_map = layer_spec(ModelConfig()).submodules.sharded_state_dict_keys_map
    for rule in LAYER_RULES:
        saved = rule.local
        for old, new in keys_map.items():
            if saved.startswith(old):
                saved = new + saved[len(old):]
        assert saved == rule.te
    entry = build_name_table(ModelConfig(num_layers=2))[1]
    assert (entry.ckpt_key, entry.layer) == ("decoder.layers.self_attention.linear_qkv.layer_norm_weight", 0)


@pytest.mark.parametrize("preset,hf", [("llama3.1-8b", META_8B), ("llama3.1-70b", META_70B)])
def test_meta_release_configs_match_the_presets(preset, hf):
    got = model_config_from_hf(hf)
    want = load_config([f"model={preset}"]).model
    for name in ARCH_FIELDS:
        assert getattr(got, name) == getattr(want, name), name
    assert got.precision == "bf16"
    back = hf_config_from_model(got, torch.bfloat16)
    assert {k: v for k, v in back.items() if k in hf} == {
        k: v for k, v in hf.items() if k != "transformers_version"}
    assert model_config_from_hf(back) == got


def test_transformers5_rope_parameters_layout_is_read():
    rope = {**LLAMA31_ROPE, "rope_theta": 500000.0}
    cfg = {k: v for k, v in META_8B.items() if k not in ("rope_scaling", "rope_theta")}
    assert model_config_from_hf({**cfg, "rope_parameters": rope}) == model_config_from_hf(META_8B)
    plain = model_config_from_hf({**cfg, "rope_parameters": {"rope_type": "default",
                                                             "rope_theta": 10000.0}})
    assert (plain.rope_scaling, plain.rotary_base) == (False, 10000)
    assert hf_config_from_model(plain, torch.float32)["rope_scaling"] is None


def test_unsupported_config_names_every_field():
    bad = {**META_8B, "architectures": ["MistralForCausalLM"], "hidden_act": "gelu",
           "attention_bias": True, "num_key_value_heads": 5, "rope_theta": 5e5 + 0.5,
           "rope_scaling": {**LLAMA31_ROPE, "low_freq_factor": 2.0,
                            "original_max_position_embeddings": 4096}}
    with pytest.raises(ConversionError) as e:
        model_config_from_hf(bad, where="x/config.json")
    text = str(e.value)
    assert text.startswith("x/config.json: cannot convert, 7 problem(s)")
    for field in ("architectures=['MistralForCausalLM']", "hidden_act='gelu'", "attention_bias=True",
                  "num_attention_heads=32 is not divisible by num_key_value_heads=5",
                  "rope_theta=500000.5", "rope_scaling.low_freq_factor=2.0",
                  "rope_scaling.original_max_position_embeddings=4096"):
        assert field in text
    with pytest.raises(ConversionError, match=r"rope_scaling.rope_type='yarn' is not supported"):
        model_config_from_hf({**META_8B, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ConversionError, match=r"head_dim=7 must be even"):
        model_config_from_hf({**META_8B, "head_dim": 7})


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return make_tiny_hf_llama(tmp_path_factory.mktemp("hf"), rope_scaling=LLAMA31_ROPE,
                              max_position_embeddings=131072)


def _copy_with_config(src, dst, **changes):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).symlink_to(f)
    (dst / "config.json").unlink()
    config = {**json.loads((src / "config.json").read_text()), **changes}
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_import_refuses_before_any_tensor_moves(tiny_hf, tmp_path):
    from elama.convert.import_hf import import_hf

    # The fixture's own rope scaling (original 64) is not what megatron-core implements.
    bad_rope = _copy_with_config(tiny_hf, tmp_path / "rope", rope_scaling={
        **LLAMA31_ROPE, "original_max_position_embeddings": 64})
    with pytest.raises(ConversionError, match=r"rope_scaling.original_max_position_embeddings=64"):
        import_hf(bad_rope, tmp_path / "out1", progress=False)
    wrong_shape = _copy_with_config(tiny_hf, tmp_path / "shape", intermediate_size=96)
    with pytest.raises(ConversionError) as e:
        import_hf(wrong_shape, tmp_path / "out2", progress=False)
    assert "model.layers.0.mlp.gate_proj.weight (model.safetensors) has shape [128, 64], " \
           "config.json implies [96, 64]" in str(e.value)
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()
    import torch.distributed as dist

    assert not dist.is_initialized()  # refused before any process group was started


def test_read_token_ids_formats_and_errors(tmp_path):
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    np.save(tmp_path / "t.npy", ids)
    (tmp_path / "t.json").write_text("[1, 2, 3]")
    (tmp_path / "t.txt").write_text("1 2 3\n\n4 5 6\n")
    assert read_token_ids(tmp_path / "t.npy", 10).tolist() == ids.tolist()
    assert read_token_ids(tmp_path / "t.json", 10).tolist() == [[1, 2, 3]]
    assert read_token_ids(tmp_path / "t.txt", 10).tolist() == ids.tolist()
    with pytest.raises(ScoringError, match=r"id 6 at sequence 1, position 2 is outside .*\[0, 6\)"):
        read_token_ids(tmp_path / "t.txt", 6)
    (tmp_path / "bad.txt").write_text("1 2\n3 x\n")
    with pytest.raises(ScoringError, match=r"bad.txt:2: expected integers"):
        read_token_ids(tmp_path / "bad.txt", 10)
    np.save(tmp_path / "f.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(ScoringError, match=r"expected integer ids"):
        read_token_ids(tmp_path / "f.npy", 10)


def test_scoring_config_takes_the_model_from_the_checkpoint(tmp_path):
    m = dataclasses.replace(model_config_from_hf(META_8B), num_layers=4, precision="bf16")
    iter_dir = tmp_path / checkpoint.iter_name(0)
    iter_dir.mkdir()
    checkpoint.write_meta(iter_dir, {"kind": "weights", "step": 0, "model": dataclasses.asdict(m)})
    checkpoint.write_tracker(tmp_path, 0)
    cfg, found = build_scoring_config(tmp_path, ["model.precision=fp32", "parallel.tp=2"],
                                      world_size=2)
    assert found == iter_dir and cfg.parallel.tp == 2
    assert cfg.model == dataclasses.replace(m, precision="fp32")
    with pytest.raises(ConfigError, match=r"model.num_layers=2: the architecture comes from"):
        build_scoring_config(tmp_path, ["model.num_layers=2"], world_size=1)
    with pytest.raises(ConfigError, match=r"model=tiny"):
        build_scoring_config(tmp_path, ["model=tiny"], world_size=1)
    with pytest.raises(ConfigError, match=r"parallel.tp"):
        build_scoring_config(tmp_path, ["parallel.tp=3"], world_size=3)


def test_clis_report_bad_input_with_exit_code_2(tiny_hf, tmp_path, capsys):
    from tools.convert_checkpoint import main as convert
    from tools.logits import main as logits

    bad = _copy_with_config(tiny_hf, tmp_path / "bad", hidden_act="gelu")
    assert convert(["import", str(bad), str(tmp_path / "out"), "--no-progress"]) == 2
    assert "hidden_act='gelu' is not supported" in capsys.readouterr().err
    assert convert(["export", str(tmp_path / "none"), str(tmp_path / "out")]) == 2
    assert "neither a checkpoint" in capsys.readouterr().err
    assert logits([str(tmp_path / "none"), "t.npy", "o.npy"]) == 2
    assert not (tmp_path / "out").exists()


def test_dist_reader_refuses_other_backends(tmp_path):
    from elama.convert.dist_reader import DistCheckpointReader

    (tmp_path / "metadata.json").write_text(json.dumps({"sharded_backend": "zarr"}))
    with pytest.raises(CheckpointError, match=r"sharded_backend='zarr'; only 'torch_dist'"):
        DistCheckpointReader(tmp_path)
    with pytest.raises(CheckpointError, match=r"not a megatron distributed checkpoint"):
        DistCheckpointReader(tmp_path / "missing")
