"""What every refusal in the fault lane must show: a non-zero exit, no Python traceback, a
message naming the file or field; and a snapshot to prove files were left untouched."""
from __future__ import annotations

import os
from pathlib import Path


def assert_refused(code: int, text: str, *needles: str, exit_code: int | None = None) -> None:
    assert code != 0, f"exit 0 for a bad input:\n{text[-2000:]}"
    if exit_code is not None:
        assert code == exit_code, f"exit {code}, expected {exit_code}:\n{text[-2000:]}"
    assert "Traceback (most recent call last)" not in text, text[-3000:]
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text[-3000:]}"


def snapshot(root) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under root."""
    root = Path(root)
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def cli(main, argv, capsys, caplog) -> tuple[int, str]:
    """Run a CLI's main(argv) here; its exit code and everything it printed or logged."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out + out.err + caplog.text


def files_at(prefix: str) -> list[str]:
    """Which of the dataset files exist at prefix."""
    return [s for s in (".bin", ".idx", ".manifest.json") if os.path.exists(prefix + s)]
