"""bench/workers.py: a worker is told to go only after it is ready and the parent's before() ran,
and a failing worker's stderr reaches the error."""
import importlib.util
import sys
from pathlib import Path

import pytest

# loaded from its file: bench/ on sys.path would shadow top-level names (bench/eval.py, ...)
_spec = importlib.util.spec_from_file_location(
    "bench_workers", Path(__file__).resolve().parents[2] / "bench" / "workers.py")
workers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workers)

WORKER = """
import json, sys, time
sys.path.insert(0, {bench!r})
import workers
from pathlib import Path
marker = Path(sys.argv[1])
started = marker.exists()
workers.wait_for_go()
print(json.dumps({{"existed_at_start": started, "exists_at_go": marker.exists()}}))
"""


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "worker.py"
    path.write_text(body.format(bench=str(Path(workers.__file__).parent)))
    return path


def test_before_runs_between_ready_and_go(tmp_path):
    marker = tmp_path / "cleared"
    calls = []

    def before():
        calls.append("before")
        marker.write_text("x")
    result = workers.run([sys.executable, str(_script(tmp_path, WORKER)), str(marker)], before)
    assert calls == ["before"]
    assert result == {"existed_at_start": False, "exists_at_go": True}


def test_failing_worker_reports_its_stderr(tmp_path):
    body = "import sys\nsys.stderr.write('disk on fire\\n')\nsys.exit(3)\n"
    calls = []
    with pytest.raises(SystemExit, match=r"(?s)exit 3.*disk on fire"):
        workers.run([sys.executable, str(_script(tmp_path, body))], lambda: calls.append(1))
    assert calls == []  # never ready: nothing cleared


def test_worker_failing_after_go(tmp_path):
    body = ("import sys\nsys.path.insert(0, {bench!r})\nimport workers\nworkers.wait_for_go()\n"
            "raise RuntimeError('write failed')\n")
    with pytest.raises(SystemExit, match="write failed"):
        workers.run([sys.executable, str(_script(tmp_path, body))], lambda: None)


def test_raw_copy_writes_the_copied_files_byte_for_byte(tmp_path):
    """The floor copies `copy` (a file larger than its 64 MB buffer, and an empty one) and only
    reads `read`."""
    src = tmp_path / "src"
    src.mkdir()
    big, empty, only_read = src / "big.bin", src / "empty.bin", src / "other.bin"
    big.write_bytes(bytes(range(256)) * ((65 << 20) // 256) + b"tail")
    empty.write_bytes(b"")
    only_read.write_bytes(b"x" * 1000)
    body = ("import json, sys\nfrom pathlib import Path\nsys.path.insert(0, {bench!r})\n"
            "import workers\na = sys.argv[1:]\n"
            "secs = workers.raw_copy([Path(a[0])], [Path(a[1]), Path(a[2])], Path(a[3]))\n"
            "print(json.dumps({{'seconds': secs}}))\n")
    out = tmp_path / "out"
    result = workers.run([sys.executable, str(_script(tmp_path, body)), str(only_read), str(big),
                          str(empty), str(out)], lambda: None)
    assert result["seconds"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["big.bin", "empty.bin"]
    assert (out / "big.bin").read_bytes() == big.read_bytes()
    assert (out / "empty.bin").read_bytes() == b""
