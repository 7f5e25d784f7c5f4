"""Fixtures of the distributed lane: a small tokenized e-commerce + general blend, made once."""
from __future__ import annotations

import pytest


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
