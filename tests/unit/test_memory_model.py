"""The planner's memory model against Megatron-LM's theoretical formula (Korthikanti et al. 2022)
on a table of layouts, the documented differences term by term, the pipeline schedules' in-flight
microbatches, and the fit verdicts the issue names."""
from __future__ import annotations

import functools

import pytest

from elama.config import load_config
from elama.parallel.dims import ParallelDims
from elama.planner.gpus import GIB, GPUS
from elama.planner.layout import param_shapes
from elama.planner.memory import in_flight_chunks, layer_activation_bytes, stage_memory

SEQ = 8192


def megatron_formula_bytes(m, *, tp, pp, vpp, dp, sp, selective, microbatches,
                           dropout_masks=True) -> tuple:
    """(weights and optimizer, activations) of the first stage as Megatron-LM's
    megatron/training/theoretical_memory_usage.py computes them (bf16, fp32 grads and Adam),
    re-written from reading it. `dropout_masks=False` drops the terms it keeps for dropout masks
    (2 sbh per layer, sbh after the embedding), which a dropout-0 model does not store."""
    h, f, v, layers = m.hidden_size, m.ffn_hidden_size, m.vocab_size, m.num_layers
    a, g, d = m.num_attention_heads, m.num_query_groups, m.head_dim
    layer_params = 2 * h * h * (1 + g / a) * (a * d / h) + 3 * h * f
    sharded = (layer_params * layers / pp + h * v * (2 if pp == 1 else 1)) / tp
    weights = (sharded + (2 * layers + 1) * h / pp) * (6 + 12 / dp)  # distributed optimizer
    sbh, masks = SEQ * h, (0 if dropout_masks else 2)
    embedding = 8 * SEQ * pp + (SEQ * h * pp if dropout_masks else 0)
    if sp and selective:
        act = sbh * (18 - masks + 4 * f / h) * layers + embedding
    else:
        act = sbh * (10 - masks + 24 / tp) * layers + embedding
    if vpp > 1:
        act *= 1 + (pp - 1) / (pp * vpp)
    elif pp > 1:
        act *= min(1, microbatches / pp)
    if sp and selective:
        return weights, (act + (sbh * 4 * (1 + v / h) if pp == 1 else 0)) / tp
    return weights, 1.05 * (act + ((SEQ * v / tp + sbh) * 2 if pp == 1 else 0))


@functools.lru_cache(maxsize=None)
def _model(name):
    return load_config([f"model={name}", "model.transformer_impl=te"]).model


def _cfg(name, tp, pp, vpp, sp, recompute, gbs, precision="bf16", mbs=1):
    return load_config([f"model={name}", "model.transformer_impl=te", f"model.recompute={recompute}",
                        f"model.precision={precision}", f"parallel.tp={tp}", f"parallel.pp={pp}",
                        f"parallel.vpp={vpp}", f"parallel.sequence_parallel={str(sp).lower()}",
                        "parallel.distributed_optimizer=true", f"data.seq_len_tokens={SEQ}",
                        f"train.micro_batch_size={mbs}", f"train.global_batch_size={gbs}"])


def _stages(cfg, world, gpu="h100-80gb"):
    dims = ParallelDims.from_config(cfg.parallel, world)
    per_stage = param_shapes(cfg.model).per_stage(dims, cfg.model.num_layers)
    return dims, stage_memory(cfg, dims, per_stage, GPUS[gpu])


# model, tp, pp, vpp, sequence parallel, recompute, world size, global batch
TABLE = [
    ("llama3.1-8b", 1, 1, 1, False, "none", 8, 16),
    ("llama3.1-8b", 2, 1, 1, True, "selective", 480, 1440),  # e-Llama 8B
    ("llama3.1-8b", 4, 2, 1, False, "selective", 64, 128),
    ("llama3.1-70b", 8, 4, 5, True, "selective", 480, 1440),  # e-Llama 70B
    ("llama3.1-70b", 4, 8, 5, True, "selective", 64, 128),  # Megatron-Bridge's 70B layout
    ("llama3.1-70b", 8, 8, 1, False, "none", 128, 128),
    ("llama3.1-70b", 4, 4, 1, False, "selective", 64, 128),
    ("llama3.1-70b", 8, 2, 1, True, "selective", 64, 128),
]


@pytest.mark.parametrize("name,tp,pp,vpp,sp,recompute,world,gbs", TABLE)
def test_memory_matches_megatron_formula_within_10_percent(name, tp, pp, vpp, sp, recompute,
                                                           world, gbs):
    cfg = _cfg(name, tp, pp, vpp, sp, recompute, gbs)
    dims, stages = _stages(cfg, world)
    first = stages[0].components
    ours_state = first["weights"] + first["grads"] + first["optimizer"]
    ours_act = first["activations"] + first["input_ids"] + first.get("logits_loss", 0.0)
    kwargs = dict(tp=tp, pp=pp, vpp=vpp, dp=dims.dp, sp=sp, selective=recompute == "selective",
                  microbatches=dims.num_microbatches(gbs, 1))
    weights, act = megatron_formula_bytes(cfg.model, dropout_masks=False, **kwargs)
    # Parameters come from megatron's real modules; the formula spreads the final norm over the
    # stages (h/pp parameters), otherwise the counts agree exactly.
    assert ours_state == pytest.approx(weights, rel=1e-5)
    total = (ours_state + ours_act) / (weights + act)
    assert abs(total - 1) <= 0.10, f"ours / megatron = {total:.3f}"
    # With its dropout masks (Llama trains without dropout) the formula is higher, never lower.
    _, act_with_masks = megatron_formula_bytes(cfg.model, dropout_masks=True, **kwargs)
    assert act_with_masks > act


@pytest.mark.parametrize("name", ["llama3.1-8b", "llama3.1-70b"])
def test_per_layer_difference_is_swiglu_minus_gqa(name):
    """Ours minus the formula (without dropout masks), per layer at tp=1, is exactly the two
    architecture terms: SwiGLU keeps 2*s*ffn more bytes than a GeLU MLP of the same width, and GQA
    keeps 4*s*h*(1 - groups/heads) fewer bytes of K and V; plus flash attention's fp32 LSE."""
    m = _model(name)
    h, f, a, g = m.hidden_size, m.ffn_hidden_size, m.num_attention_heads, m.num_query_groups
    ours = layer_activation_bytes(m, SEQ, 1, 1, False, fused_attention=True)  # recompute none
    formula = SEQ * h * (16 + 4 * f / h)  # 18 + 4f/h minus the 2 sbh of dropout masks
    swiglu, gqa, lse = 2 * SEQ * f, 4 * SEQ * h * (1 - g / a), 4 * a * SEQ
    assert ours - formula == pytest.approx(swiglu - gqa + lse, rel=1e-9)


def test_sequence_parallel_divides_every_activation_by_tp():
    m = _model("llama3.1-70b")
    full = layer_activation_bytes(m, SEQ, 1, 1, False, fused_attention=True)
    for tp in (2, 4, 8):
        assert layer_activation_bytes(m, SEQ, 1, tp, True, fused_attention=True) == \
            pytest.approx(full / tp)
        # Without SP the norms' inputs and outputs (8 sbh) stay whole on every rank: up to 2.6x.
        assert layer_activation_bytes(m, SEQ, 1, tp, False, fused_attention=True) == \
            pytest.approx(full / tp + 8 * SEQ * m.hidden_size * (1 - 1 / tp))


def test_in_flight_microbatches_follow_megatrons_schedules():
    def dims(pp, vpp):
        return ParallelDims(tp=1, pp=pp, vpp=vpp, cp=1, dp=1, world_size=pp)

    assert [in_flight_chunks(dims(4, 1), p, 96) for p in range(4)] == [4, 3, 2, 1]
    assert in_flight_chunks(dims(4, 1), 0, 2) == 2  # fewer microbatches than stages
    assert in_flight_chunks(dims(1, 1), 0, 96) == 1
    # Interleaved: the formula's penalty 1 + (pp-1)/(pp*vpp) on pp microbatches of a full stage.
    for pp, vpp in ((4, 5), (8, 5), (2, 2)):
        chunks = in_flight_chunks(dims(pp, vpp), 0, 96)
        assert chunks / vpp == pytest.approx(pp * (1 + (pp - 1) / (pp * vpp)))
        assert [in_flight_chunks(dims(pp, vpp), p, 96) for p in range(pp)] == \
            [chunks - 2 * p for p in range(pp)]


def test_recompute_modes_order_activation_memory():
    acts = {}
    for mode in ("none", "selective", "full"):
        cfg = _cfg("llama3.1-70b", 8, 4, 5, True, mode, 1440)
        acts[mode] = _stages(cfg, 480)[1][0].components["activations"]
    assert acts["full"] < 0.1 * acts["selective"]
    assert acts["selective"] < acts["none"] < 1.01 * acts["selective"]  # flash attention: LSE only
    cfg = _cfg("llama3.1-70b", 8, 4, 5, True, "none", 1440)
    cfg.model.transformer_impl = "local"  # unfused attention keeps the s x s softmax
    unfused = _stages(cfg, 480)[1][0]
    softmax = 2 * 64 * SEQ * SEQ / 8  # bf16 probabilities of 64 heads, split over tp=8
    lse = 4 * 64 * SEQ / 8
    layers_held = unfused.in_flight * 4  # 4 layers per chunk
    assert unfused.components["activations"] - acts["none"] == \
        pytest.approx(layers_held * (softmax - lse))


def _fits(cfg, world):
    return all(s.fits for s in _stages(cfg, world)[1])


def test_8b_at_8k_fits_80gb_at_tp2_with_sp_but_not_at_tp1():
    assert not _fits(_cfg("llama3.1-8b", 1, 1, 1, False, "none", 480), 480)
    assert _fits(_cfg("llama3.1-8b", 2, 1, 1, True, "none", 480), 480)


def test_70b_fits_in_the_papers_layout_but_not_at_tp1_pp1():
    assert _fits(_cfg("llama3.1-70b", 8, 4, 5, True, "selective", 1440), 480)
    assert not _fits(_cfg("llama3.1-70b", 1, 1, 1, False, "selective", 1440), 480)


def test_last_stage_holds_the_fp32_logits_and_first_the_most_microbatches():
    cfg = _cfg("llama3.1-70b", 8, 4, 5, True, "selective", 1440)
    _, stages = _stages(cfg, 480)
    logits = stages[-1].components["logits_loss"]
    assert logits == pytest.approx((6 * SEQ * 128256 / 8 + 2 * SEQ * 8192 / 8))
    assert "logits_loss" not in stages[0].components
    assert stages[0].total_bytes == max(s.total_bytes for s in stages)
    # tp=1 and pp=1: one fp32 copy of the logits is about 4 GiB at seq 8192, vocab 128k.
    single = _stages(_cfg("llama3.1-8b", 1, 1, 1, False, "none", 16), 8)[1][0]
    assert 3.9 < 4 * SEQ * 128256 / GIB < 4.0 < single.components["logits_loss"] / GIB


def test_fp8_adds_weight_caches_and_fp32_drops_master_weights():
    bf16 = _stages(_cfg("llama3.1-8b", 2, 1, 1, True, "selective", 480), 480)[1][0].components
    fp8 = _stages(_cfg("llama3.1-8b", 2, 1, 1, True, "selective", 480, precision="fp8"),
                  480)[1][0].components
    fp32 = _stages(_cfg("llama3.1-8b", 2, 1, 1, True, "selective", 480, precision="fp32"),
                   480)[1][0].components
    assert fp8["fp8_weight_cache"] == pytest.approx(bf16["weights"])
    assert fp32["weights"] == pytest.approx(2 * bf16["weights"])
    assert fp32["optimizer"] == pytest.approx(bf16["optimizer"] * 8 / 12)
