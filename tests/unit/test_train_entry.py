"""elama.train refuses a bad run before any process group starts, listing every problem; a changed
blend on resume is refused unless re-planned."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch.distributed as dist

from elama import checkpoint
from elama.config import load_config
from elama.resume import check_resume
from elama.train import EXIT_CONFIG, main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from elama.data.demo_corpus import write_demo_corpus
    from elama.data.tokenize import tokenize_files

    root = tmp_path_factory.mktemp("data")
    corpus = write_demo_corpus(str(root / "raw"), seed=0, ecommerce_docs=40, general_bytes=0)
    prefix = str(root / "ecommerce")
    tokenize_files(corpus["ecommerce"], prefix, text_keys=("title", "description"),
                   merge=True, progress=False)
    return prefix


def _blend(*prefixes) -> str:
    return "data.train_blend=[" + ",".join(f"{{prefix:{p},weight:1}}" for p in prefixes) + "]"


def test_every_problem_reported_before_any_process_group(dataset, tmp_path, caplog, monkeypatch):
    other = tmp_path / "other"
    for suffix in (".bin", ".idx", ".manifest.json"):
        shutil.copy(dataset + suffix, str(other) + suffix)
    manifest = json.loads((tmp_path / "other.manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = "0" * 64  # tokenized with another tokenizer
    (tmp_path / "other.manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("WORLD_SIZE", "4")
    caplog.set_level(logging.ERROR)
    code = main(["model=tiny", _blend(dataset, tmp_path / "missing", other),
                 "parallel.tp=2", "train.global_batch_size=3", "data.seq_len_tokens=200000",
                 f"checkpoint.run_dir={tmp_path / 'run'}"])
    assert code == EXIT_CONFIG
    assert not dist.is_initialized()
    text = caplog.text
    for needle in (f"{tmp_path / 'missing'}.manifest.json: no such manifest",
                   "was tokenized with", "global_batch_size=3 is not divisible",
                   "data.seq_len_tokens=200000 exceeds"):
        assert needle in text, needle


def test_changed_blend_on_resume_needs_replan(dataset, tmp_path):
    run_dir = tmp_path / "run"
    iter_dir = run_dir / checkpoint.iter_name(10)
    iter_dir.mkdir(parents=True)
    cfg = load_config(["model=tiny", _blend(dataset), f"checkpoint.run_dir={run_dir}"])
    from elama.data.blend import blend_fingerprint, load_blend

    sources, _ = load_blend(cfg.data.train_blend, "data.train_blend")
    checkpoint.write_meta(iter_dir, {"model": cfg.model.__dict__, "train_state": {},
                                     "data": {"source": "blend", "seq_len_tokens": 64,
                                              "blend": blend_fingerprint(sources)}})
    checkpoint.write_tracker(run_dir, 10)
    assert check_resume(cfg, 1) == []
    cfg.data.train_blend[0].weight = 0.3
    cfg.data.train_blend.append(cfg.data.train_blend[0].__class__(prefix=dataset, weight=0.7))
    problems = check_resume(cfg, 1)
    assert len(problems) == 1 and "data.replan=true" in problems[0] and "blend" in problems[0]
    cfg.data.replan = True
    assert check_resume(cfg, 1) == []
    cfg.model.num_layers = 8
    assert any("model.num_layers=8" in p for p in check_resume(cfg, 1))


def test_check_mode_refuses_an_unwritable_run_dir_and_passes_a_good_one(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert main(["--check", "data=synthetic", "checkpoint.run_dir=/proc/elama-run"]) == EXIT_CONFIG
    assert "checkpoint.run_dir=/proc/elama-run is not writable" in caplog.text
    assert main(["--check", "data=synthetic", f"checkpoint.run_dir={tmp_path / 'run'}"]) == 0
    assert (tmp_path / "run").is_dir() and not dist.is_initialized()


def test_config_errors_print_once_not_once_per_rank(tmp_path):
    from tests.launch import Ranks

    ranks = Ranks(2, ["data=synthetic", "+parallel.tpp=2", f"checkpoint.run_dir={tmp_path / 'run'}"],
                  tmp_path / "logs")
    assert ranks.wait(timeout_s=180) == [EXIT_CONFIG, EXIT_CONFIG]
    assert "parallel.tpp is not a field of the config (did you mean parallel.tp" in ranks.log(0)
    assert "invalid config" not in ranks.log(1) and "Traceback" not in ranks.log(1)
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
