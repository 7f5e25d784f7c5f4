"""tools/gpu_check.sh is ready for a GPU host: shellcheck-clean, its offline wheel list pins
megatron-core 0.16.1 and documents `pip download`, and its steps' commands compose a valid
training config (checked here on CPU, without running them)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.unit.test_shellcheck import _shellcheck

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_script_passes_shellcheck():
    proc = subprocess.run([_shellcheck(), "--format=gcc", "tools/gpu_check.sh"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout


def test_wheel_list_pins_megatron_and_says_how_to_fill_it():
    text = (REPO / "tools" / "gpu_wheels" / "requirements.txt").read_text()
    wanted = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "megatron-core==0.16.1" in wanted and "psutil" in wanted
    assert "pip download" in text and "--find-links" in (REPO / "tools" / "gpu_check.sh").read_text()


def test_the_training_command_is_a_valid_config(tmp_path):
    plan = subprocess.run([sys.executable, "tools/gpu_check.py", "--workdir", str(tmp_path), "--plan"],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    overrides = plan[plan.index("elama.train") + 1:]
    from elama.config import load_config, validate

    cfg = load_config(overrides)
    validate(cfg, 1, planning=True)  # planning: this machine has no GPU to check for
    assert cfg.device == "cuda" and cfg.parallel.distributed_optimizer
    assert cfg.model.precision == "bf16" and cfg.model.transformer_impl == "local"
