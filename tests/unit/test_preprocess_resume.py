"""Offline tokenization's determinism: the same bytes for any worker count, reruns that skip
finished work, and a kill -9 then a rerun that ends byte-identical to an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from elama.data.manifest import read_manifest
from elama.data.tokenize import tokenize_files
from tests.unit.preprocess_corpus import (write_bad_corpus, write_synthetic_files,
                                          write_tricky_corpus)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tree(root: str) -> dict[str, bytes]:
    """Every output file under root by relative path (the lock file aside)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name != "LOCK":
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    out[os.path.relpath(path, root)] = f.read()
    return out


def _mtimes(root: str) -> dict[str, int]:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(root) for f in files if f != "LOCK"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    paths = write_synthetic_files(str(root / "syn"), n_files=3, docs_per_file=1500)
    paths += write_tricky_corpus(str(root / "tricky"))[0]
    paths += write_bad_corpus(str(root / "bad"))["paths"]
    return paths


@pytest.mark.parametrize("merge", [False, True])
def test_output_identical_for_one_and_two_workers(corpus, tmp_path, merge):
    trees = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        manifest = tokenize_files(corpus, str(out / "ds"), workers=workers, merge=merge,
                                  chunk_bytes=64_000, max_reject_fraction=0.5,
                                  language_key="lang", progress=False, accept_truncated=True)
        trees.append(_tree(str(out)))
    assert trees[0] == trees[1]
    assert manifest["documents_written"] > 4500 and manifest["documents_rejected"] > 0
    assert ("ds.bin" in trees[0]) == merge and ("ds.manifest.json" in trees[0])


def test_rerun_skips_finished_shards_and_redoes_changed_input(corpus, tmp_path):
    inputs = []
    for i, src in enumerate(corpus[:3]):  # private copies: one is rewritten below
        dst = tmp_path / f"in{i}.jsonl"
        dst.write_bytes(open(src, "rb").read())
        inputs.append(str(dst))
    out = str(tmp_path / "out")
    first = tokenize_files(inputs, out + "/ds", progress=False)
    before = _mtimes(out)
    assert tokenize_files(inputs, out + "/ds", progress=False) == first
    assert _mtimes(out) == before  # nothing rewritten
    with open(inputs[1], "ab") as f:
        f.write(b'{"text": "one more document", "lang": "en"}\n')
    third = tokenize_files(inputs, out + "/ds", progress=False)
    assert third["documents_written"] == first["documents_written"] + 1
    after = _mtimes(out)
    changed = {os.path.basename(p) for p in after if after[p] != before.get(p)}
    assert changed == {"00001-in1.bin", "00001-in1.idx", "00001-in1.rejects.jsonl",
                       "00001-in1.manifest.json", "ds.manifest.json", "ds.rejects.jsonl"}


@pytest.mark.parametrize("failure", ["raises", "dies"])
def test_worker_failure_fails_the_run_and_keeps_committed_work(corpus, tmp_path, monkeypatch,
                                                               failure):
    from elama.data import workers

    real_write_part, calls = workers.write_part, []

    def flaky(*args, **kwargs):  # runs in each forked worker: its third unit fails
        calls.append(1)
        if len(calls) == 3:
            if failure == "dies":
                os._exit(9)  # as the kernel's OOM killer would end it
            raise OSError("disk full")
        return real_write_part(*args, **kwargs)

    monkeypatch.setattr(workers, "write_part", flaky)
    with pytest.raises(RuntimeError, match="disk full" if failure == "raises" else "died"):
        tokenize_files(corpus[:3], str(tmp_path / "ds"), workers=2, chunk_bytes=100_000,
                       progress=False)
    assert any(f.endswith(".json") for f in os.listdir(tmp_path / "ds.shards"))  # committed
    monkeypatch.setattr(workers, "write_part", real_write_part)
    assert tokenize_files(corpus[:3], str(tmp_path / "ds"), workers=2, chunk_bytes=100_000,
                          progress=False)["documents_written"] == 4500


def test_array_tasks_then_final_run_equal_one_run(corpus, tmp_path, monkeypatch):
    """Tasks 0 and 1 of 2 at once (as a Slurm array), then the final merge: the same bytes as
    one run, and the final run tokenizes nothing."""
    import multiprocessing

    from elama.data import workers

    kwargs = dict(merge=True, max_reject_fraction=0.5, language_key="lang", progress=False,
                  accept_truncated=True)
    tokenize_files(corpus, str(tmp_path / "one" / "ds"), **kwargs)
    ctx = multiprocessing.get_context("fork")
    tasks = [ctx.Process(target=tokenize_files, args=(corpus, str(tmp_path / "arr" / "ds")),
                         kwargs=dict(kwargs, task_index=i, num_tasks=2)) for i in range(2)]
    for p in tasks:
        p.start()
    for p in tasks:
        p.join()
    assert [p.exitcode for p in tasks] == [0, 0]
    assert not os.path.exists(tmp_path / "arr" / "ds.manifest.json")
    monkeypatch.setattr(workers, "write_part", None)  # the final run must find all shards done
    tokenize_files(corpus, str(tmp_path / "arr" / "ds"), **kwargs)
    assert _tree(str(tmp_path / "arr")) == _tree(str(tmp_path / "one"))


@pytest.mark.slow  # two CLI starts (megatron-core imports ~3 s each)
def test_kill_9_then_rerun_is_byte_identical(tmp_path):
    paths = write_synthetic_files(str(tmp_path / "in"), n_files=6, docs_per_file=6000, seed=7)
    reference = tokenize_files(paths, str(tmp_path / "ref" / "ds"), merge=True, chunk_bytes=1 << 20,
                               language_key="lang", progress=False)
    prefix = str(tmp_path / "run" / "ds")
    cmd = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", *paths,
           "--output-prefix", prefix, "--merge", "--chunk-mb", "1", "--language-key", "lang",
           "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shards = prefix + ".shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # mid-way: some work committed
        if os.path.isdir(shards) and any(f.endswith((".manifest.json", ".json"))
                                         for f in os.listdir(shards)):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not os.path.exists(prefix + ".manifest.json"), "the run finished before the kill"
    committed = [f for f in os.listdir(shards) if f.endswith(".json")]
    assert committed, "nothing was committed before the kill"
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert read_manifest(prefix) == reference
    ref_prefix = str(tmp_path / "ref" / "ds")
    for suffix in (".bin", ".idx", ".rejects.jsonl", ".manifest.json"):
        with open(prefix + suffix, "rb") as a, open(ref_prefix + suffix, "rb") as b:
            assert a.read() == b.read(), suffix
    assert not os.path.exists(shards)
