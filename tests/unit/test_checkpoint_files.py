"""Checkpoint files a kill or a crash can leave wrong: a rank's missing RNG file is refused when
the layout is the one that saved it (re-seeded, with a warning, when the layout changed); a model
directory without metadata.json is refused by name; meta.json and RNG files are fsynced."""
from __future__ import annotations

import os

import pytest

from elama import checkpoint

LAYOUT = "tp=1 pp=1 vpp=1 cp=1 dp=1 (world_size=1)"


def test_missing_rng_file_is_refused_at_the_same_layout(tmp_path):
    rng_dir = tmp_path / "iter_0000004" / "rng"
    rng_dir.mkdir(parents=True)
    with pytest.raises(checkpoint.CheckpointError, match=r"rank_00000\.pt is missing.*"
                                                         r"the layout that saved"):
        checkpoint.load_rng(rng_dir, LAYOUT, saved_layout=LAYOUT)
    assert checkpoint.load_rng(rng_dir, LAYOUT, saved_layout="tp=2 pp=1") is False  # re-seeded


def test_rng_files_round_trip_and_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    checkpoint.save_rng(tmp_path / "rng", LAYOUT)
    checkpoint.write_meta(tmp_path, {"step": 1})
    assert len(synced) == 2  # the RNG file and meta.json
    assert checkpoint.load_rng(tmp_path / "rng", LAYOUT, saved_layout=LAYOUT) is True
    assert checkpoint.read_meta(tmp_path)["step"] == 1


@pytest.mark.parametrize("make", ["missing", "empty_dir", "file"])
def test_model_directory_without_metadata_is_refused(tmp_path, make):
    directory = tmp_path / "model"
    if make == "empty_dir":
        directory.mkdir()
    elif make == "file":
        directory.write_text("not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="no model weights here"):
        checkpoint.load_model([], directory)


def test_commit_fsyncs_the_run_directory_after_the_rename(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(checkpoint, "fsync_dir", lambda path: synced.append(str(path)))
    tmp = checkpoint.begin(tmp_path, 3)
    (tmp / "meta.json").write_text("{}")
    checkpoint.commit(tmp_path, 3, keep_last=2)
    assert synced == [str(tmp_path), str(tmp_path)]  # after the rename, after the tracker
    assert checkpoint.read_tracker(tmp_path) == 3 and (tmp_path / "iter_0000003").is_dir()
