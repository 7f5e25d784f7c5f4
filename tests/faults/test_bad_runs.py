"""Runs refused before any process group starts, the checkpoint files untouched, and every
resume refusal naming the intact iteration and the command that resumes from it: the tracker
gone or garbage, a distributed-optimizer checkpoint resumed by the plain optimizer, context
parallelism, an unwritable run directory; and the converters' and merger's bad inputs."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch.distributed as dist

from elama import checkpoint
from tests.faults.conftest import TRAIN_STEPS, train_argv
from tests.faults.refusals import assert_refused, cli, snapshot

TRACKER = checkpoint.TRACKER


@pytest.fixture
def check(capsys, caplog):
    from elama import train

    caplog.set_level(logging.INFO)
    return lambda run_dir, *extra: cli(train.main, ["--check", *train_argv(run_dir, *extra)],
                                       capsys, caplog)


@pytest.fixture
def run_copy(reference_run, tmp_path):
    """A copy of the reference run (checkpoints at steps 6 and 8, the tracker at 8)."""
    copy = tmp_path / "run"
    shutil.copytree(reference_run, copy)
    return copy


def test_tracker_gone_refuses_naming_the_newest_checkpoint(run_copy, check):
    (run_copy / TRACKER).unlink()
    before = snapshot(run_copy)
    code, text = check(run_copy)
    newest = run_copy / checkpoint.iter_name(TRAIN_STEPS)
    assert_refused(code, text, f"checkpoint.run_dir={run_copy} holds checkpoints but no {TRACKER}",
                   f"the newest intact checkpoint is {newest}",
                   f"`echo {TRAIN_STEPS} > {run_copy / TRACKER}`", exit_code=2)
    assert snapshot(run_copy) == before and not dist.is_initialized()
    (run_copy / TRACKER).write_text(f"{TRAIN_STEPS}\n")  # the command it gave, then it passes
    assert check(run_copy)[0] == 0


def test_garbage_tracker(run_copy, check):
    (run_copy / TRACKER).write_text("garbage\n")
    before = snapshot(run_copy)
    code, text = check(run_copy)
    assert_refused(code, text, f"{run_copy / TRACKER}: expected a step number, found 'garbage'",
                   f"`echo {TRAIN_STEPS} >", exit_code=2)
    assert snapshot(run_copy) == before


def test_tracker_naming_an_incomplete_checkpoint_points_to_the_intact_one(run_copy, check):
    shutil.rmtree(run_copy / checkpoint.iter_name(TRAIN_STEPS) / "model")
    (run_copy / checkpoint.iter_name(TRAIN_STEPS) / "meta.json").unlink()
    code, text = check(run_copy)
    assert_refused(code, text, f"names step {TRAIN_STEPS}",
                   f"the newest intact checkpoint is {run_copy / checkpoint.iter_name(6)}",
                   f"`echo 6 > {run_copy / TRACKER}`", exit_code=2)


def test_distributed_optimizer_checkpoint_with_the_plain_optimizer(run_copy, check):
    before = snapshot(run_copy)
    code, text = check(run_copy, "parallel.distributed_optimizer=false")
    assert_refused(code, text, "parallel.distributed_optimizer=false", "distributed optimizer",
                   "resume with parallel.distributed_optimizer=true", exit_code=2)
    assert snapshot(run_copy) == before


def test_context_parallelism_is_refused_by_name(check, tmp_path):
    code, text = check(tmp_path / "run", "parallel.cp=2", "model.transformer_impl=te")
    assert_refused(code, text, "parallel.cp=2: context parallelism is not supported",
                   "set parallel.cp=1", exit_code=2)


def test_read_only_run_directory(check):
    code, text = check("/proc/elama-faults-run")
    assert_refused(code, text, "checkpoint.run_dir=/proc/elama-faults-run is not writable",
                   exit_code=2)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    from tests.hf_fixtures import make_tiny_hf_llama

    # bos/eos 256/257 (not Llama 3's); rope scaling as megatron-core supports it
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    return make_tiny_hf_llama(tmp_path_factory.mktemp("hf") / "tiny", seed=0, rope_scaling=rope,
                              max_position_embeddings=131072)


def test_import_without_safetensors(hf_model, tmp_path, capsys, caplog):
    from tools import convert_checkpoint

    src = tmp_path / "no-weights"
    src.mkdir()
    shutil.copy(hf_model / "config.json", src / "config.json")
    code, text = cli(convert_checkpoint.main, ["import", src, tmp_path / "out", "--no-progress"],
                     capsys, caplog)
    assert_refused(code, text, str(src), "model.safetensors")
    assert not (tmp_path / "out").exists()


def test_merge_alpha_outside_0_1(hf_model, tmp_path, capsys, caplog):
    from tools import merge_models

    code, text = cli(merge_models.main, ["--base", hf_model, "--model", hf_model, "--out",
                                         tmp_path / "merged", "--alpha", "1.5", "--no-progress"],
                     capsys, caplog)
    assert_refused(code, text, "alpha", "1.5")
    assert not (tmp_path / "merged").exists()


def _import(src: str, out: str) -> None:
    from elama.convert.import_hf import import_hf

    import_hf(src, out, progress=False)


def test_export_without_a_tokenizer_writes_the_imported_ids(hf_model, tmp_path):
    """The tiny model's bos/eos are 256/257, not Llama 3's 128000/128001."""
    from elama.convert.export_hf import export_hf
    from tests.spawn import run_distributed

    run_distributed(_import, 1, str(hf_model), str(tmp_path / "elama"))
    export_hf(tmp_path / "elama", tmp_path / "hf", with_tokenizer=False, progress=False)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (256, 257)
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (256, [257])
