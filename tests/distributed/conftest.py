"""Fixtures of the distributed lane: CUDA hidden from every rank process it starts (so the lane
runs its CPU ranks on a GPU host too), a small tokenized e-commerce + general blend, made once."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _hide_cuda_from_ranks(monkeypatch):
    """Rank processes (spawned or started like srun's tasks) inherit this environment: with no
    visible GPU, torch reports none and the CPU device layer applies. The pytest process itself
    is unchanged, so the gpu lane in the same session still sees its GPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="session")
def tiny_blend(tmp_path_factory) -> dict:
    """{"ecommerce": prefix, "general": prefix} of small merged datasets (real Llama 3 ids)."""
    from elama.data.demo_corpus import write_demo_corpus
    from elama.data.tokenize import tokenize_files

    root = tmp_path_factory.mktemp("blend")
    corpus = write_demo_corpus(str(root / "raw"), seed=0, ecommerce_docs=300,
                               general_bytes=150_000)
    keys = {"ecommerce": ("title", "aspects", "description"), "general": ("text",)}
    prefixes = {}
    for name, paths in corpus.items():
        prefixes[name] = str(root / name)
        tokenize_files(paths, prefixes[name], text_keys=keys[name], language_key="lang",
                       merge=True, progress=False)
    return prefixes
