"""How a training run ended, in words and on disk: rank 0's last line ("done at step 60",
"preempted: saved iter_0000030, exit 75") and <run_dir>/outcome.json, so that the result survives
launchers such as torchrun, which turn every non-zero exit code into 1."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

OUTCOME_FILE = "outcome.json"
EXIT_FAILED = 1


@dataclass
class Outcome:
    kind: str
    """done | exited (train.exit_interval) | preempted | nonfinite | invalid | failed."""
    step: int | None
    """Optimizer steps completed; None when the run failed before its state existed."""
    exit_code: int
    """What the process exits with (0, 2, 3, 75 or 1)."""
    checkpoint: str | None = None
    """The newest checkpoint this process saved (iter_NNNNNNN), if any."""
    error: str | None = None
    """The error that ended a failed or stopped run."""

    def line(self) -> str:
        saved = f"saved {self.checkpoint}" if self.checkpoint else "nothing saved"
        at = f"at step {self.step}" if self.step is not None else "before the first step"
        if self.kind == "done":
            return f"done at step {self.step}"
        if self.kind == "exited":
            return f"stopped at step {self.step} (train.exit_interval): {saved}, exit {self.exit_code}"
        if self.kind == "preempted":
            return f"preempted: {saved}, exit {self.exit_code}"
        return f"{self.kind} {at}: {self.error}; {saved}, exit {self.exit_code}"


def write_outcome(run_dir: str | Path, outcome: Outcome, world_size: int) -> Path:
    """<run_dir>/outcome.json, replaced atomically (a reader never sees half a file)."""
    path = Path(run_dir) / OUTCOME_FILE
    record = {**dataclasses.asdict(outcome), "line": outcome.line(), "world_size": world_size,
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{OUTCOME_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_outcome(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / OUTCOME_FILE
    return json.loads(path.read_text()) if path.exists() else None
