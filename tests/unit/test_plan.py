"""python -m elama.plan: layouts for GPU clusters validated on a CPU machine; the paper's runs, the
fit verdict and its exit codes, the JSON contract, --recommend."""
from __future__ import annotations

import json
import re

import pytest

from elama.plan import EXIT_DOES_NOT_FIT, main

PAPER_GPU_HOURS_70B = 340_000  # e-Llama's authors: 1T tokens on 480 H100s


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, out, json.loads(out.strip().splitlines()[-1]) if "--json" in argv else None


@pytest.mark.parametrize("experiment,peak_lr", [("cpt_8b_ecom", 3e-5), ("cpt_70b_ecom", 1.5e-5)])
def test_paper_runs_fit_and_print_throughput_mfu_and_gpu_hours(experiment, peak_lr, capsys):
    code, out, report = _run(capsys, f"experiment={experiment}", "--nodes", "60",
                             "--gpus-per-node", "8", "--json")
    assert code == 0 and report["fits"] is True
    assert "fit: FITS h100-80gb" in out
    tokens = int(re.search(r"= ([\d,]+) tokens per step", out).group(1).replace(",", ""))
    assert abs(tokens - 11.8e6) / 11.8e6 < 0.01
    total = int(re.search(r"tokens for [\d,]+ steps: ([\d,]+)", out).group(1).replace(",", ""))
    assert abs(total - 1e12) / 1e12 < 0.01  # e-Llama: 1T tokens
    assert "world_size=480" in out
    printed = re.search(r"throughput: ([\d,]+) tokens/s/GPU, \d+ model TFLOP/s/GPU, MFU ([\d.]+)%",
                        out)
    assert int(printed.group(1).replace(",", "")) == round(report["est_tokens_per_s_per_gpu"])
    assert float(printed.group(2)) == pytest.approx(report["mfu_pct"], abs=0.05)
    hours = int(re.search(r"([\d,]+) GPU-hours", out).group(1).replace(",", ""))
    assert hours == round(report["est_gpu_hours"])
    # Step time x steps x GPUs is the GPU-hours; tokens/s/GPU x GPUs x time is the budget.
    assert report["est_gpu_hours"] * 3600 * report["est_tokens_per_s_per_gpu"] == \
        pytest.approx(total, rel=1e-6)
    if experiment == "cpt_70b_ecom":
        assert abs(report["est_gpu_hours"] / PAPER_GPU_HOURS_70B - 1) <= 0.30
    assert 20 < report["mfu_pct"] < 60
    from elama.config import load_config

    cfg = load_config([f"experiment={experiment}"])
    assert cfg.optim.lr == peak_lr and cfg.optim.schedule == "cosine"
    weights = {e.prefix.rsplit("/", 1)[-1]: e.weight for e in cfg.data.train_blend}
    assert weights["ecommerce"] == 0.5  # half e-commerce, half replay with 10% non-English
    assert weights["general_multilingual"] == pytest.approx(0.1 * (1 - weights["ecommerce"]))


def test_json_contract_keys_and_components(capsys):
    _, _, report = _run(capsys, "experiment=cpt_70b_ecom", "--nodes", "60", "--json")
    for key in ("fits", "memory_gib_per_gpu", "memory_gib", "est_tokens_per_s_per_gpu", "mfu_pct",
                "est_gpu_hours"):
        assert key in report
    assert report["memory_gib_per_gpu"] == pytest.approx(sum(report["memory_gib"].values()))
    assert report["memory_gib_per_gpu"] == max(report["memory_gib_per_stage"])
    for part in ("weights", "grads", "optimizer", "activations", "cuda_context", "nccl"):
        assert report["memory_gib"][part] > 0


def test_readme_example_prints_a_verdict_and_exits_4_when_it_does_not_fit(capsys):
    # Without sequence parallelism, distributed optimizer or recompute, and with the unfused
    # local attention (s x s scores), 70B at tp8 pp4 overflows an 80 GB GPU.
    code, out, report = _run(capsys, "model=llama3.1-70b", "parallel.tp=8", "parallel.pp=4",
                             "--world-size", "480", "train.global_batch_size=1440",
                             "train.micro_batch_size=1", "data.seq_len_tokens=8192", "--json")
    assert code == EXIT_DOES_NOT_FIT == 4 and report["fits"] is False
    assert "70,553,706,496 parameters" in out
    assert "parameters per rank (max): 2,270,765,056" in out
    over = float(re.search(r"DOES NOT FIT h100-80gb \(79.6 GiB\): .* over by ([\d.]+) GiB",
                           out).group(1))
    assert over == pytest.approx(report["memory_gib_per_gpu"] - report["gpu_memory_gib"], abs=0.06)


def test_gpu_choice_changes_the_verdict(capsys):
    # 8B at seq 8192 on one data-parallel group of 8 at tp=1: 80 GB is too small, 141 GB is not.
    args = ("model=llama3.1-8b", "model.transformer_impl=te", "data.seq_len_tokens=8192",
            "train.global_batch_size=64", "train.micro_batch_size=1",
            "parallel.distributed_optimizer=true", "--world-size", "8", "--json")
    code80, _, r80 = _run(capsys, *args, "--gpu", "h100-80gb")
    code141, out, r141 = _run(capsys, *args, "--gpu", "h200-141gb")
    assert (code80, code141) == (4, 0)
    assert r80["memory_gib_per_gpu"] == pytest.approx(r141["memory_gib_per_gpu"])
    assert "headroom" in out
    code40, _, _ = _run(capsys, *args, "--gpu", "a100-40gb")
    assert code40 == 4


def test_fp8_on_a100_is_refused(capsys):
    assert main(["experiment=cpt_8b_ecom", "model.precision=fp8", "--nodes", "60",
                 "--gpu", "a100-80gb"]) == 2
    assert "a100-80gb has no fp8 tensor cores" in capsys.readouterr().err


def test_wrong_layout_lists_every_problem_and_exits_2(capsys):
    assert main(["model=llama3.1-70b", "parallel.tp=3", "parallel.pp=7", "--world-size", "480"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n  - ") >= 4
    assert "num_attention_heads=64 is not divisible by tp=3" in err


def test_recommend_prints_five_fastest_layouts_that_fit(capsys):
    code, out, report = _run(capsys, "model=llama3.1-70b", "model.transformer_impl=te",
                             "parallel.distributed_optimizer=true", "data.seq_len_tokens=8192",
                             "train.global_batch_size=1440", "--world-size", "480", "--recommend",
                             "--json")
    assert code == 0 and report["fits"] is True
    found = report["recommendations"]
    assert len(found) == 5
    assert all(r["fits"] and r["memory_gib_per_gpu"] <= 79.65 for r in found)
    tokens = [r["est_tokens_per_s_per_gpu"] for r in found]
    assert tokens == sorted(tokens, reverse=True)
    assert out.rsplit("\n", 2)[0].count("parallel.tp=") == 5  # text lines, before the JSON
    # Each recommendation, planned on its own, fits with the same numbers.
    best = found[0]
    code, _, alone = _run(capsys, "model=llama3.1-70b", "model.transformer_impl=te",
                          "parallel.distributed_optimizer=true", "data.seq_len_tokens=8192",
                          "train.global_batch_size=1440", *best["overrides"].split(),
                          "--world-size", "480", "--json")
    assert code == 0
    assert alone["memory_gib_per_gpu"] == pytest.approx(best["memory_gib_per_gpu"])
    assert alone["est_tokens_per_s_per_gpu"] == pytest.approx(best["est_tokens_per_s_per_gpu"])


def test_recommend_names_a_config_problem_outside_the_layout_and_exits_2(capsys):
    assert main(["model=llama3.1-8b", "optim.lr=-1", "--world-size", "8", "--recommend"]) == 2
    assert "optim.lr=-1.0 must be > 0" in capsys.readouterr().err
    # A batch that no data-parallel degree divides: no layout is valid.
    assert main(["model=llama3.1-8b", "train.global_batch_size=7", "--world-size", "48",
                 "--recommend"]) == 2
    assert "train.global_batch_size=7" in capsys.readouterr().err
