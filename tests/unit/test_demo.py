"""The demo removes only what it made (never a directory it did not make, never the repository),
and its real command path (`--quick`: fewer steps, a smaller corpus) prints no warning lines,
states each run's outcome, says its generated text is noise and writes its loss-curve PNG."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tools import demo

# The warning lines `make demo` used to print (TE/Apex fallbacks, deprecated collectives, "full
# scope", CUDA_DEVICE_MAX_CONNECTIONS, ShardedTensor, deprecated DCP calls) and warnings.warn echoes.
WARNING_LINE = re.compile(r"Warning\b|warnings\.warn|Transformer Engine|Apex|is deprecated|"
                          r"full scope|CUDA_DEVICE_MAX_CONNECTIONS|ShardedTensor|^W\d{4} ")


def test_a_directory_the_demo_did_not_make_is_refused_untouched(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("years of work")
    assert demo.main(["--run-dir", str(tmp_path)]) == 2
    assert "was not made by the demo" in capsys.readouterr().err
    assert (tmp_path / "thesis.tex").read_text() == "years of work"
    for run_dir in (".", str(demo.REPO)):
        assert demo.main(["--run-dir", run_dir]) == 2
    assert (demo.REPO / "setup.py").exists() and not (demo.REPO / demo.MARKER).exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(demo.DemoError, match="is a file"):
        demo.prepare_run_dir(tmp_path / "file")


def test_a_rerun_removes_only_the_demos_own_entries(tmp_path):
    run_dir = tmp_path / "demo_run"
    demo.prepare_run_dir(run_dir)  # new: created and marked
    assert (run_dir / demo.MARKER).is_file()
    (run_dir / "train").mkdir()
    (run_dir / "train" / "metrics.jsonl").write_text("{}")
    (run_dir / "loss_curves.png").write_bytes(b"png")
    (run_dir / "notes.txt").write_text("mine")  # the user's, put into the demo's directory
    demo.prepare_run_dir(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == [demo.MARKER, "notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    demo.prepare_run_dir(empty)  # an empty directory is fine
    assert [p.name for p in empty.iterdir()] == [demo.MARKER]


@pytest.mark.slow
def test_quick_demo_prints_no_warnings_and_shows_its_outcomes_and_png(tmp_path):
    run_dir = tmp_path / "demo_run"
    done = subprocess.run([sys.executable, "tools/demo.py", "--quick", "--run-dir", str(run_dir)],
                          cwd=demo.REPO, capture_output=True, text=True, timeout=900,
                          env={**{k: v for k, v in os.environ.items()
                                  if k != "ELAMA_SHOW_WARNINGS"}, "OMP_NUM_THREADS": "1"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    warnings = [line for line in output.splitlines() if WARNING_LINE.search(line)]
    assert warnings == [], "\n".join(warnings[:20])
    assert "Traceback" not in output
    assert f"loss curves: {run_dir / 'loss_curves.png'}" in output
    assert (run_dir / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "tokens.png").is_file()
    assert "outcome: stopped at step 2 (train.exit_interval): saved iter_0000002" in output
    assert "outcome: done at step 4" in output
    assert "noise, as expected" in output
    assert output.count("invalid config") == 0
    # everything it wrote is an entry a rerun removes (a missing one made `make demo` fail twice)
    assert {p.name for p in run_dir.iterdir()} <= set(demo.ENTRIES)
    demo.prepare_run_dir(run_dir)
    assert [p.name for p in run_dir.iterdir()] == [demo.MARKER]
