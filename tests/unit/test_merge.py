"""Model merging: exact endpoints, hand-computed linear / task arithmetic / SLERP / TIES, per-pattern
alphas, transformers loading the output, refusals with named causes, no partial outputs, sweeps."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import elama.merge as merge
from elama.convert.hf import (CheckpointError, HFCheckpointReader, ShardedSafetensorsWriter,
                              copy_side_files)
from elama.merge import (MergeError, MergeSpec, merge_checkpoints, merge_linear, merge_slerp,
                         merge_task_arithmetic, merge_ties, sweep, trim_to_density)
from tests.hf_fixtures import make_tiny_hf_llama
from tools.merge_models import main as cli_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Sharded tiny Llamas: a bf16 base/adapted pair, and three float32 models."""
    root = tmp_path_factory.mktemp("ckpts")
    bf16 = dict(dtype=torch.bfloat16, max_shard_size="100KB")
    return {"base": make_tiny_hf_llama(root / "base", seed=0, **bf16),
            "adapted": make_tiny_hf_llama(root / "adapted", seed=1, **bf16),
            **{f"f32_{i}": make_tiny_hf_llama(root / f"f32_{i}", seed=10 + i) for i in range(3)}}


def _tensors(path) -> dict[str, torch.Tensor]:
    with HFCheckpointReader(path) as r:
        return {n: r.get(n) for n in r.names()}


def _merge(ckpts, out, *models, **spec):
    names = models or ("adapted",)
    base = "f32_0" if names[0].startswith("f32") else "base"
    return merge_checkpoints(ckpts[base], [ckpts[m] for m in names], out, MergeSpec(**spec),
                             max_shard_bytes=60_000, progress=False)


@pytest.mark.parametrize("method,alpha,expect", [("linear", 0.0, "base"), ("linear", 1.0, "adapted"),
                                                  ("slerp", 0.0, "base"), ("slerp", 1.0, "adapted"),
                                                  ("task_arithmetic", 0.0, "base")])
def test_endpoints_reproduce_inputs_bitwise(ckpts, tmp_path, method, alpha, expect):
    result = _merge(ckpts, tmp_path / "out", method=method, alpha=alpha)
    got, want = _tensors(result.path), _tensors(ckpts[expect])
    assert result.num_shards > 1 and got.keys() == want.keys()
    for name, t in want.items():
        assert got[name].dtype == torch.bfloat16 and torch.equal(got[name], t), name


def test_kernels_on_hand_computed_numbers():
    base, model = torch.tensor([1.0, 2.0, -4.0]), torch.tensor([3.0, -2.0, 4.0])
    assert merge_linear(base, model, 0.25).tolist() == [1.5, 1.0, -2.0]
    m2 = torch.tensor([0.0, 2.0, -8.0])
    # base + 0.5 * (1.0 * (model - base) + -2.0 * (m2 - base)) = base + 0.5*[2-(-2), -4-0, 8-(-8)]
    assert merge_task_arithmetic(base, [model, m2], [1.0, -2.0], 0.5).tolist() == [3.0, 0.0, 4.0]


def test_linear_and_task_arithmetic_match_formula_on_checkpoints(ckpts, tmp_path):
    b, m1, m2 = (_tensors(ckpts[k]) for k in ("f32_0", "f32_1", "f32_2"))
    linear = _tensors(_merge(ckpts, tmp_path / "lin", "f32_1", method="linear", alpha=0.3).path)
    ta = _tensors(_merge(ckpts, tmp_path / "ta", "f32_1", "f32_2", method="task_arithmetic",
                         alpha=0.8, weights=(0.5, -0.25)).path)
    for name in b:
        x, y, z = b[name].double(), m1[name].double(), m2[name].double()
        torch.testing.assert_close(linear[name].double(), 0.7 * x + 0.3 * y, rtol=1e-6, atol=1e-8)
        want = x + 0.8 * (0.5 * (y - x) - 0.25 * (z - x))
        torch.testing.assert_close(ta[name].double(), want, rtol=1e-6, atol=1e-7)


def test_slerp_follows_the_arc():
    # Quarter circle: halfway is 45 degrees; a third of the way on a radius-2 arc is 30 degrees.
    h = math.sqrt(0.5)
    torch.testing.assert_close(merge_slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 0.5),
                               torch.tensor([h, h]))
    torch.testing.assert_close(merge_slerp(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0]), 1 / 3),
                               torch.tensor([math.sqrt(3.0), 1.0]))
    # Unequal norms: the coefficients sin((1-t)theta)/sin(theta) = sin(t theta)/sin(theta) = sqrt(1/2).
    torch.testing.assert_close(merge_slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0]), 0.5),
                               torch.tensor([h, 3 * h]))
    g = torch.Generator().manual_seed(0)
    v0, v1 = torch.randn(4096, generator=g), torch.randn(4096, generator=g)
    v1 = v1 * (v0.norm() / v1.norm())
    theta = math.acos(float(v0 @ v1) / float(v0.norm() * v1.norm()))
    for t in (0.1, 0.5, 0.8):
        out = merge_slerp(v0, v1, t)
        assert math.isclose(out.norm().item(), v0.norm().item(), rel_tol=1e-5)  # stays on the sphere
        angle = math.acos(float(out @ v0) / float(out.norm() * v0.norm()))
        assert math.isclose(angle, t * theta, rel_tol=1e-4)
    # Colinear: the arc is undefined, so it is the linear interpolation.
    torch.testing.assert_close(merge_slerp(v0, 2 * v0, 0.25), merge_linear(v0, 2 * v0, 0.25))


def test_ties_worked_example():
    base = torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0])
    taus = [torch.tensor([0.5, -0.1, 0.3, 0.0, -0.8]),
            torch.tensor([-0.4, 0.25, 0.1, 0.6, -0.2]),
            torch.tensor([0.3, -0.35, -0.05, 0.1, 0.0])]
    # density 0.6 keeps the top 3 of 5 per task vector:
    #   [0.5, 0, 0.3, 0, -0.8], [-0.4, 0.25, 0, 0.6, 0], [0.3, -0.35, 0, 0.1, 0]
    # elected signs (sign of the sums 0.4, -0.1, 0.3, 0.7, -0.8): +, -, +, +, -
    # disjoint means of agreeing nonzeros: (0.5+0.3)/2, -0.35, 0.3, (0.6+0.1)/2, -0.8
    merged = torch.tensor([0.4, -0.35, 0.3, 0.35, -0.8])
    models = [base + t for t in taus]
    torch.testing.assert_close(merge_ties(base, models, [1.0] * 3, 0.6, 1.0), base + merged)
    torch.testing.assert_close(merge_ties(base, models, [1.0] * 3, 0.6, 0.5), base + 0.5 * merged)
    assert trim_to_density(taus[1], 0.6).tolist() == pytest.approx([-0.4, 0.25, 0.0, 0.6, 0.0])
    # Opposite equal updates cancel in the election: the base is kept there.
    opposed = merge_ties(torch.zeros(2), [torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 2.0])],
                         [1.0, 1.0], 1.0, 1.0)
    assert opposed.tolist() == [0.0, 2.0]


def test_whole_tensor_methods_on_checkpoints(ckpts, tmp_path):
    b, m1, m2 = (_tensors(ckpts[k]) for k in ("f32_0", "f32_1", "f32_2"))
    ties = _tensors(_merge(ckpts, tmp_path / "ties", "f32_1", "f32_2", method="ties", alpha=1.0,
                           density=0.3).path)
    slerp = _tensors(_merge(ckpts, tmp_path / "slerp", "f32_1", method="slerp", alpha=0.4).path)
    for name in b:
        want = merge_ties(b[name], [m1[name], m2[name]], [1, 1], 0.3, 1.0)
        torch.testing.assert_close(ties[name], want)
        torch.testing.assert_close(slerp[name], merge_slerp(b[name], m1[name], 0.4))


def test_pattern_overrides_and_unmatched_pattern(ckpts, tmp_path):
    overrides = (("model.embed_tokens.*", 0.0), ("lm_head.weight", 0.0))
    got = _tensors(_merge(ckpts, tmp_path / "out", alpha=1.0, overrides=overrides).path)
    base, adapted = _tensors(ckpts["base"]), _tensors(ckpts["adapted"])
    for name in base:
        want = base if name in ("model.embed_tokens.weight", "lm_head.weight") else adapted
        assert torch.equal(got[name], want[name]), name
    with pytest.raises(MergeError, match="override pattern 'model.embed.weight' matches no tensor"):
        _merge(ckpts, tmp_path / "typo", overrides=(("model.embed.weight", 0.0),))


def test_output_loads_in_transformers_and_generates(ckpts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = _merge(ckpts, tmp_path / "out", alpha=0.5, out_dtype=torch.float32)
    config = json.loads((result.path / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and config["rope_scaling"]["rope_type"] == "llama3"
    model = AutoModelForCausalLM.from_pretrained(result.path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(result.path, local_files_only=True)
    written = _tensors(result.path)
    state = model.state_dict()
    assert all(torch.equal(state[n], t) for n, t in written.items())
    ids = tok("an e-commerce query", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], config["vocab_size"]) and torch.isfinite(logits).all()
    generated = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 2)


def _variant(src: Path, dst: Path, drop: str | None = None, edit_tokenizer: bool = False) -> Path:
    """A copy of src without the tensor drop, or with a different tokenizer.json."""
    dst.mkdir()
    copy_side_files(src, dst)
    with HFCheckpointReader(src) as r, ShardedSafetensorsWriter(dst) as w:
        for name in r.names():
            if name != drop:
                w.add(name, r.get(name))
    if edit_tokenizer:
        tok = json.loads((dst / "tokenizer.json").read_text())
        tok["added_tokens"][0]["content"] = "<|other_bos|>"
        (dst / "tokenizer.json").write_text(json.dumps(tok))
    return dst


@pytest.mark.parametrize("case,messages", [
    ("missing_tensor", ["lacks 1 tensor(s) of the base: ['model.layers.1.mlp.up_proj.weight']"]),
    ("tokenizer", ["tokenizer.json differs between", "different tokenizers"]),
    ("shapes", ["config.json field intermediate_size: 128 in", "but 96 in",
                "tensor model.layers.0.mlp.gate_proj.weight: shape [128, 64] in"]),
    ("vocab", ["config.json field vocab_size: 272 in", "tensor model.embed_tokens.weight: shape"]),
    ("architecture", ["config.json field num_key_value_heads: 2 in", "but 4 in"]),
])
def test_refuses_incompatible_checkpoints(ckpts, tmp_path, case, messages):
    if case in ("missing_tensor", "tokenizer"):
        other = _variant(ckpts["adapted"], tmp_path / case, drop="model.layers.1.mlp.up_proj.weight"
                         if case == "missing_tensor" else None, edit_tokenizer=case == "tokenizer")
    else:
        field = {"shapes": {"intermediate_size": 96}, "vocab": {"vocab_size": 300},
                 "architecture": {"num_key_value_heads": 4}}[case]
        other = make_tiny_hf_llama(tmp_path / case, seed=1, dtype=torch.bfloat16, **field)
    with pytest.raises(MergeError) as err:
        merge_checkpoints(ckpts["base"], [other], tmp_path / "out", progress=False)
    for message in messages:
        assert message in str(err.value)
    assert not (tmp_path / "out").exists()


def test_refuses_bad_options_listing_all(ckpts, tmp_path):
    with pytest.raises(MergeError) as err:
        merge_checkpoints(ckpts["base"], [ckpts["adapted"], ckpts["adapted"]], tmp_path / "o",
                          MergeSpec("linear", 1.5, density=0.5, overrides=(("x*", -1.0),)))
    text = str(err.value)
    for message in ("method=linear merges exactly one model", "alpha=1.5 is out of range [0, 1.0]",
                    "alpha for 'x*'=-1.0 is out of range", "density applies to method=ties only"):
        assert message in text
    with pytest.raises(MergeError, match="alpha=nan is out of range"):
        merge.validate_spec(MergeSpec("task_arithmetic", float("nan")), 1)
    with pytest.raises(MergeError, match=r"density=0.0 is out of range \(0, 1\]"):
        merge.validate_spec(MergeSpec("ties", 1.0, density=0.0), 2)
    with pytest.raises(MergeError, match="would replace input"):
        merge_checkpoints(ckpts["base"], [ckpts["adapted"]], ckpts["adapted"], force=True)


def test_existing_output_needs_force_and_failures_leave_nothing(ckpts, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _merge(ckpts, out, alpha=0.0)
    with pytest.raises(CheckpointError, match="output directory exists; pass --force"):
        _merge(ckpts, out, alpha=1.0)
    calls, add_rows = [], ShardedSafetensorsWriter.add_rows

    def failing(*args):  # the fourth block write fails, on the merge's writer thread
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("disk full")
        return add_rows(*args)

    monkeypatch.setattr(ShardedSafetensorsWriter, "add_rows", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        merge_checkpoints(ckpts["base"], [ckpts["adapted"]], out, MergeSpec("linear", 1.0),
                          force=True, max_shard_bytes=60_000, progress=False)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory left behind
    assert all(torch.equal(t, _tensors(ckpts["base"])[n]) for n, t in _tensors(out).items())
    _merge(ckpts, tmp_path / "new", alpha=1.0)
    merge_checkpoints(ckpts["base"], [ckpts["adapted"]], out, MergeSpec("linear", 1.0), force=True,
                      progress=False)
    assert all(torch.equal(t, _tensors(ckpts["adapted"])[n]) for n, t in _tensors(out).items())


def test_sweep_writes_models_and_table_with_hook_metrics(ckpts, tmp_path):
    base = _tensors(ckpts["base"])["model.layers.0.mlp.up_proj.weight"].float()

    def distance_from_base(alpha, path):
        up = _tensors(path)["model.layers.0.mlp.up_proj.weight"].float()
        return {"shift": (up - base).abs().mean().item()}

    rows = sweep(ckpts["base"], [ckpts["adapted"]], tmp_path / "sweep", [0, 0.5, 1],
                 on_merged=distance_from_base, progress=False)
    assert [r["alpha"] for r in rows] == [0, 0.5, 1]
    shifts = [r["shift"] for r in rows]
    assert shifts[0] == 0.0 and 0 < shifts[1] < shifts[2]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == [
        "alpha_0", "alpha_0.5", "alpha_1", "sweep.json", "sweep.tsv"]
    table = (tmp_path / "sweep" / "sweep.tsv").read_text().splitlines()
    assert table[0].split("\t") == ["alpha", "path", "tensors", "gbytes", "shards", "merge_s",
                                    "shift"]
    assert len(table) == 4 and table[2].startswith("0.5\t")
    info = json.loads((tmp_path / "sweep" / "alpha_0.5" / merge.MERGE_INFO_FILE).read_text())
    assert info["method"] == "linear" and info["alpha"] == 0.5
    rows = sweep(ckpts["base"], [ckpts["adapted"]], tmp_path / "evaluated", [0.25],
                 on_merged=lambda a, p: {"score": a}, keep_merged=False, progress=False)
    assert rows[0]["score"] == 0.25 and "deleted" in rows[0]["path"]
    assert not (tmp_path / "evaluated" / "alpha_0.25").exists()
    with pytest.raises(MergeError, match=r"alpha=2.0 is out of range"):
        sweep(ckpts["base"], [ckpts["adapted"]], tmp_path / "bad", [0.5, 2.0])


def test_cli_sweep_and_refusals(ckpts, tmp_path, capsys):
    args = ["--base", str(ckpts["base"]), "--model", str(ckpts["adapted"]), "--no-progress"]
    assert cli_main(args + ["--out", str(tmp_path / "s"), "--alphas", "0,0.25,1",
                            "--override", "lm_head.weight=0", "--max-shard-size", "60KB"]) == 0
    printed = capsys.readouterr().out
    assert "alpha_0.25" in printed
    assert (tmp_path / "s" / "alpha_1" / "model.safetensors.index.json").exists()
    assert cli_main(args + ["--out", str(tmp_path / "s"), "--alpha", "0.5"]) == 2
    assert "output directory exists; pass --force" in capsys.readouterr().err
    assert cli_main(args + ["--out", str(tmp_path / "x"), "--alpha", "1.5"]) == 2
    assert "alpha=1.5 is out of range" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "merge_models.py"), *args,
                           "--out", str(tmp_path / "y"), "--alpha", "-0.5"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "alpha=-0.5 is out of range" in proc.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("density", [0.3, 0.999, 1.0])
def test_streamed_ties_and_slerp_match_whole_tensors_across_many_blocks(ckpts, tmp_path,
                                                                        monkeypatch, density):
    """Blocks of a few rows and chunks of 100 elements: TIES' two-pass radix select finds the
    same thresholds as kthvalue on the whole tensor (bitwise the same output), SLERP's angle
    from blocks the same as from the whole tensor."""
    import elama.merge_stream as stream

    monkeypatch.setattr(stream, "READ_BLOCK_BYTES", 1000)
    monkeypatch.setattr(stream, "COMPUTE_CHUNK_ELEMS", 100)
    b, m1, m2 = (_tensors(ckpts[k]) for k in ("f32_0", "f32_1", "f32_2"))
    ties = _tensors(_merge(ckpts, tmp_path / "ties", "f32_1", "f32_2", method="ties", alpha=0.8,
                           density=density, weights=(1.0, 0.5)).path)
    slerp = _tensors(_merge(ckpts, tmp_path / "slerp", "f32_1", method="slerp", alpha=0.3).path)
    for name in b:
        want = merge_ties(b[name], [m1[name], m2[name]], [1.0, 0.5], density, 0.8)
        assert torch.equal(ties[name], want), name
        torch.testing.assert_close(slerp[name], merge_slerp(b[name], m1[name], 0.3),
                                   rtol=1e-6, atol=1e-7)


def test_all_finite_is_exact_where_a_sum_overflows():
    from elama.merge_stream import all_finite

    big = torch.full((1000,), 3e38)  # finite, but its sum overflows: the exact test decides
    assert all_finite(big) and all_finite(big.bfloat16()) and all_finite(torch.arange(5))
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.zeros(1000, dtype=torch.bfloat16)
        t[777] = bad
        assert not all_finite(t) and not all_finite(t.float())
    assert not all_finite(torch.tensor([float("inf"), -float("inf")]))  # a NaN sum


@pytest.mark.parametrize("read_block_bytes", [None, 1000])  # 1000: the NaN's block is not the first
@pytest.mark.parametrize("method", ["linear", "slerp", "task_arithmetic", "ties"])
def test_a_nan_in_an_input_is_refused_naming_the_tensor(ckpts, tmp_path, method, monkeypatch,
                                                        read_block_bytes):
    from safetensors.torch import load_file, save_file

    import elama.merge_stream as stream

    if read_block_bytes:
        monkeypatch.setattr(stream, "READ_BLOCK_BYTES", read_block_bytes)

    bad = tmp_path / "bad"
    bad.mkdir()
    copy_side_files(ckpts["adapted"], bad)
    for shard in sorted(Path(ckpts["adapted"]).glob("*.safetensors")):
        tensors = load_file(shard)
        target = "model.layers.1.mlp.up_proj.weight"
        if target in tensors:
            tensors[target][3, 4] = float("nan")
        save_file(tensors, bad / shard.name, metadata={"format": "pt"})
    (bad / "model.safetensors.index.json").write_bytes(
        (Path(ckpts["adapted"]) / "model.safetensors.index.json").read_bytes())
    out = tmp_path / "out"
    with pytest.raises(MergeError, match=r"tensor model\.layers\.1\.mlp\.up_proj\.weight of .*bad "
                                         r"holds NaN or inf"):
        merge_checkpoints(ckpts["base"], [bad], out, MergeSpec(method, 0.5),
                          max_shard_bytes=60_000, progress=False)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
