"""Fixtures of the fault lane: a tiny training configuration (synthetic data, a 1024-token
vocabulary: checkpoints of a few MB), one uninterrupted reference run, and a small tokenized
dataset, each made once per session."""
from __future__ import annotations

import pytest

from tests.faults.ranks import RankGroup, Zygote

TRAIN_STEPS, SAVE_INTERVAL, WORLD = 8, 2, 2


def train_argv(run_dir, *extra: str) -> list[str]:
    """dp=2, the distributed optimizer (its reload path is the one with the torch-Adam fixes)."""
    return ["model=tiny", "model.vocab_size=1024", "model.precision=fp32", "data=synthetic",
            "data.seq_len_tokens=32", "train.micro_batch_size=1", "train.global_batch_size=4",
            f"train.train_steps={TRAIN_STEPS}", "train.log_interval=1", "train.eval_interval=0",
            "optim.lr=3e-3", "optim.warmup_steps=2", "logging.tensorboard=false",
            "parallel.distributed_optimizer=true", "parallel.timeout_s=120",
            f"checkpoint.save_interval={SAVE_INTERVAL}",
            "checkpoint.keep_last=2", f"checkpoint.run_dir={run_dir}", *extra]


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote") / "log.txt")
    yield z
    z.close()


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, zygote):
    """TRAIN_STEPS steps in one go on WORLD ranks, saving every SAVE_INTERVAL."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    ranks = RankGroup(WORLD, train_argv(run_dir), run_dir.parent / "log.txt", zygote=zygote)
    assert ranks.wait() == [0] * WORLD, ranks.tail()
    return run_dir


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> str:
    """The prefix of a small merged dataset (real Llama 3 ids)."""
    from elama.data.tokenize import tokenize_files
    from tests.unit.preprocess_corpus import write_synthetic_files

    root = tmp_path_factory.mktemp("dataset")
    paths = write_synthetic_files(str(root / "in"), n_files=2, docs_per_file=200, seed=3)
    prefix = str(root / "ds")
    tokenize_files(paths, prefix, merge=True, language_key="lang", progress=False)
    return prefix
