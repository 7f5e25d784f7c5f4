"""python -m elama.plan: layouts for GPU clusters validated on a CPU machine; the paper's runs."""
from __future__ import annotations

import re

import pytest

from elama.plan import main


@pytest.mark.parametrize("experiment,peak_lr", [("cpt_8b_ecom", 3e-5), ("cpt_70b_ecom", 1.5e-5)])
def test_paper_runs_validate_for_60_nodes_of_8_gpus(experiment, peak_lr, capsys):
    assert main([f"experiment={experiment}", "--nodes", "60", "--gpus-per-node", "8"]) == 0
    out = capsys.readouterr().out
    tokens = int(re.search(r"= ([\d,]+) tokens per step", out).group(1).replace(",", ""))
    assert abs(tokens - 11.8e6) / 11.8e6 < 0.01
    total = int(re.search(r"tokens for [\d,]+ steps: ([\d,]+)", out).group(1).replace(",", ""))
    assert abs(total - 1e12) / 1e12 < 0.01  # e-Llama: 1T tokens
    assert "world_size=480" in out
    from elama.config import load_config

    cfg = load_config([f"experiment={experiment}"])
    assert cfg.optim.lr == peak_lr and cfg.optim.schedule == "cosine"
    weights = {e.prefix.rsplit("/", 1)[-1]: e.weight for e in cfg.data.train_blend}
    assert weights["ecommerce"] == 0.5  # half e-commerce, half replay with 10% non-English
    assert weights["general_multilingual"] == pytest.approx(0.1 * (1 - weights["ecommerce"]))


def test_seventy_b_layout_prints_per_rank_parameters(capsys):
    assert main(["model=llama3.1-70b", "parallel.tp=8", "parallel.pp=4", "--world-size", "480",
                 "train.global_batch_size=1440", "train.micro_batch_size=1"]) == 0
    out = capsys.readouterr().out
    assert "70,553,706,496 parameters" in out
    assert "parameters per rank (max): 2,270,765,056" in out


def test_wrong_layout_lists_every_problem_and_exits_2(capsys):
    assert main(["model=llama3.1-70b", "parallel.tp=3", "parallel.pp=7", "--world-size", "480"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n  - ") >= 4
    assert "num_attention_heads=64 is not divisible by tp=3" in err
