"""kill -9 of a whole training run (every rank and its children at once, as a lost node) at 10
points: between steps, at each stage of a save, while the tracker is written, while pruning, while
loading on resume. One run directory is killed at each point in turn and resumed; after every
kill the tracker names an intact checkpoint (or none) and never goes back, no process is left,
and the run that finally completes equals the uninterrupted one bitwise."""
from __future__ import annotations

import signal

import pytest
import torch

from elama import checkpoint
from elama.resume import newest_intact
from tests.faults.conftest import TRAIN_STEPS, WORLD, train_argv
from tests.faults.ranks import RankGroup, wait_gone, weights
from tests.launch import metrics
from tests.survivors import live_processes

pytestmark = pytest.mark.distributed

# (kill point, occurrence within that segment's process): the run directory's state after the
# previous kill decides where each lands; comments assume TRAIN_STEPS=8, saves every 2 steps.
KILL_POINTS = [
    ("step", 2),                   # between steps 1 and 2, nothing saved yet
    ("dcp_save", 1),               # the first save begun (iter_0000002.tmp), nothing written
    ("dcp_save", 2),               # model written, optimizer state not
    ("replace_iter", 1),           # every part written, the directory not yet renamed
    ("after_replace_tracker", 1),  # committed (tracker -> 2), older checkpoints not yet pruned
    ("replace_tracker", 1),        # iter_0000004 renamed, tracker tmp written, not moved
    ("after_replace_iter", 1),     # iter_0000004 renamed (again), the tracker not yet written
    ("prune", 2),                  # tracker -> 6, pruning iter_0000002
    ("step", 2),                   # between steps after a resume
    ("dcp_load", 1),               # while loading the checkpoint on resume
]


def _tracker_state(run_dir) -> int | None:
    step = checkpoint.read_tracker(run_dir)
    if step is not None:  # what it names is whole: weights, metadata
        assert (run_dir / checkpoint.iter_name(step) / "model" / "metadata.json").is_file()
        checkpoint.read_meta(run_dir / checkpoint.iter_name(step))
    return step


def test_kill_9_at_ten_points_then_resume_equals_an_uninterrupted_run(reference_run, zygote,
                                                                      tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "log.txt"
    tracked = None
    for point, n in KILL_POINTS:
        ranks = RankGroup(WORLD, train_argv(run_dir), log, kill_at=f"{point}:{n}", zygote=zygote)
        codes = ranks.wait(180)
        assert codes == [-signal.SIGKILL] * WORLD, \
            f"{point}:{n} did not kill: {codes}\n{ranks.tail()}"
        assert f"SIGKILL at {point} #{n}" in ranks.tail()
        assert not wait_gone(live_processes(pgid=ranks.pgid), 10), "a killed rank's child survived"
        now = _tracker_state(run_dir)
        assert (now or 0) >= (tracked or 0), f"the tracker went back from {tracked} to {now}"
        if now is None:  # nothing committed: the next start begins afresh, finding nothing
            assert newest_intact(run_dir) is None or point == "after_replace_iter"
        tracked = now
    ranks = RankGroup(WORLD, train_argv(run_dir), log, zygote=zygote)
    assert ranks.wait() == [0] * WORLD, ranks.tail()
    assert checkpoint.read_tracker(run_dir) == TRAIN_STEPS
    want, got = metrics(reference_run), metrics(run_dir)
    assert sorted(got) == list(range(1, TRAIN_STEPS + 1))
    for field in ("loss", "grad_norm", "lr", "consumed_tokens"):
        assert [got[s][field] for s in sorted(got)] == [want[s][field] for s in sorted(want)], field
    final = checkpoint.iter_name(TRAIN_STEPS)
    a, b = weights(reference_run / final), weights(run_dir / final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # resuming restored the optimizer and data position too: the last metrics match bitwise
