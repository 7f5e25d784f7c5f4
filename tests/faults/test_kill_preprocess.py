"""kill -9 of a preprocessing run (the run and its workers at once) at 10 points, from a part's
files being renamed to the shards' cleanup after the commit: afterwards the prefix is either the
finished dataset or refused by elama (no manifest), and the rerun's output equals an
uninterrupted run's byte for byte. The runs are forked from this process (tokenizer loaded once)."""
from __future__ import annotations

import fnmatch
import os
import shutil
import signal

import pytest

from elama.data.manifest import ManifestError, read_manifest
from elama.data.tokenize import tokenize_files
from tests.faults.ranks import wait_gone
from tests.survivors import live_processes
from tests.unit.preprocess_corpus import write_jsonl, write_synthetic_files

KW = dict(merge=True, chunk_bytes=40_000, language_key="lang", max_reject_fraction=0.5,
          progress=False)
OUTPUTS = (".bin", ".idx", ".rejects.jsonl", ".manifest.json")
# (os.replace destination or removed directory, as a glob on the basename; before/after; workers)
KILL_POINTS = [
    ("*.part00001.bin", "before", 1),           # a part's data renamed, its .json not written
    ("*.part00000.json", "after", 2),           # a part committed (in a worker)
    ("00000-*.rejects.jsonl", "before", 1),     # assembling a shard: rejects concatenated
    ("00001-*.idx", "before", 1),               # a shard's .bin in place, its .idx not
    ("00001-*.manifest.json", "before", 2),     # a shard's data in place, no manifest
    ("00002-*.manifest.json", "after", 1),      # a shard committed, its parts not yet removed
    ("ds.bin", "before", 1),                    # merging: nothing at the prefix yet
    ("ds.idx", "after", 2),                     # the merged .bin/.idx in place, no manifest
    ("ds.manifest.json", "before", 1),          # everything but the commit
    ("ds.shards", "rmtree", 1),                 # committed; the shards not yet removed
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    paths = write_synthetic_files(str(root / "in"), n_files=3, docs_per_file=150, seed=11)
    paths.append(write_jsonl(str(root / "in" / "small.jsonl.gz"),
                             [{"text": "one gz document", "lang": "en"}, {"text": 5}], "gz"))
    reference = str(root / "ref" / "ds")
    tokenize_files(paths, reference, **KW)
    return paths, reference


def _killed_run(paths, prefix, pattern, when, workers) -> int:
    """Fork a run that kill -9s its process group (itself and its workers) at the point."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setpgid(0, 0)
            _arm(pattern, when)
            tokenize_files(paths, prefix, workers=workers, **KW)
        finally:
            os._exit(0)  # reached only if the point never came
    _, status = os.waitpid(pid, 0)
    # its workers die with it (the group kill, and their parent-death signal): wait until they
    # have, as their flock on the shards directory goes with them
    assert not wait_gone(live_processes(pgid=pid), 10), "a worker outlived the killed run"
    return os.waitstatus_to_exitcode(status)


def _arm(pattern, when) -> None:
    def kill():
        os.killpg(0, signal.SIGKILL)

    real_replace, real_rmtree = os.replace, shutil.rmtree

    def replace(src, dst, *a, **k):
        hit = fnmatch.fnmatch(os.path.basename(os.fspath(dst)), pattern)
        if hit and when == "before":
            kill()
        real_replace(src, dst, *a, **k)
        if hit and when == "after":
            kill()

    def rmtree(path, *a, **k):
        if when == "rmtree" and fnmatch.fnmatch(os.path.basename(os.fspath(path)), pattern):
            kill()
        real_rmtree(path, *a, **k)

    os.replace, shutil.rmtree = replace, rmtree


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


@pytest.mark.parametrize("pattern,when,workers", KILL_POINTS,
                         ids=[f"{w}-{p}" for p, w, _ in KILL_POINTS])
def test_kill_9_then_rerun_equals_an_uninterrupted_run(corpus, tmp_path, pattern, when, workers):
    paths, reference = corpus
    prefix = str(tmp_path / "out" / "ds")
    assert _killed_run(paths, prefix, pattern, when, workers) == -signal.SIGKILL, \
        f"the run finished before reaching {when} {pattern}"
    try:  # after the kill: the finished dataset, or nothing elama would read
        assert read_manifest(prefix) == read_manifest(reference)
    except ManifestError:
        pass
    tokenize_files(paths, prefix, workers=workers, **KW)
    for suffix in OUTPUTS:
        assert _same_bytes(prefix + suffix, reference + suffix), suffix
    assert sorted(os.listdir(tmp_path / "out")) == sorted("ds" + s for s in OUTPUTS)
