"""What a newcomer reads: tool help texts with local paths and defaults, refused nonsense sizes,
one list of silenced third-party warnings (ELAMA_SHOW_WARNINGS=1 shows them), metrics with an
ETA, an offline Weights & Biases run, and loss curves as a PNG."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from elama import metrics as metrics_module
from elama.config.schema import LoggingConfig
from elama.metrics import MetricsLogger, plot_loss_curves
from tests.launch import REPO
from tools import convert_checkpoint, merge_models, preprocess_data

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _help(parser) -> str:
    return parser.format_help()


def test_convert_help_shows_a_local_path_not_a_hub_id():
    text = _help(convert_checkpoint.build_parser())
    assert "import /models/Llama-3.1-8B" in text and "import meta-llama/" not in text
    assert "local directory" in text
    sub = convert_checkpoint.build_parser()._subparsers._group_actions[0].choices["import"]
    assert "e.g. /models/Llama-3.1-8B" in sub.format_help()


def test_merge_and_preprocess_help_give_defaults_and_methods():
    merge = " ".join(_help(merge_models.build_parser()).split())
    for needle in ("linear: (1-alpha)*base + alpha*model", "ties:", "(default: linear)",
                   "--density DENSITY TIES:", "(default: 1.0)"):
        assert needle in merge, needle
    assert "worker processes (default: 1)" in " ".join(_help(preprocess_data.build_parser()).split())


@pytest.mark.parametrize("value", ["0", "-2", "nan", "inf", "lots"])
def test_chunk_mb_must_be_a_positive_size(value, capsys):
    with pytest.raises(SystemExit) as e:
        preprocess_data.build_parser().parse_args(["--input", "x", "--output-prefix", "y",
                                                   "--chunk-mb", value])
    assert e.value.code == 2 and "give a size in MiB > 0" in capsys.readouterr().err


def _import_megatron_warnings(show: bool) -> str:
    code = ("from elama.logs import quiet_warnings; quiet_warnings(); "
            "import megatron.core.optimizer, megatron.core.models.gpt.gpt_layer_specs")
    env = {"PATH": "/usr/bin:/bin", "ELAMA_SHOW_WARNINGS": "1" if show else "0"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_harmless_warnings_are_silenced_unless_asked_for():
    assert "Warning" not in _import_megatron_warnings(show=False)
    shown = _import_megatron_warnings(show=True)
    assert "Transformer Engine and Apex are not installed" in shown and "Apex is not installed" in shown


def test_metrics_carry_an_eta(tmp_path, monkeypatch, caplog):
    now = [100.0]
    monkeypatch.setattr(metrics_module, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    caplog.set_level("INFO")
    m = MetricsLogger(str(tmp_path), enabled=True, world_size=1, flops_per_token=1.0,
                      peak_tflops_per_device=None, tensorboard=False, jsonl=True, device="cpu",
                      train_steps=1000)
    etas = []
    for step, seconds in ((1, 2.0), (2, 4.0)):  # 2 s then 4 s: a mean of 3 s per step
        now[0] += seconds
        m.step_done(8)
        etas.append(m.log(step, {"loss": 3.0})["eta_s"])
    m.close()
    assert etas == [999 * 2.0, 998 * 3.0]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["eta_s"] == 2994.0
    assert "eta 0:49:54" in caplog.text


def test_wandb_offline_run_holds_the_metrics_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = LoggingConfig(wandb_project="elama-test", tensorboard=False)
    for first_step in (1, 3):  # a resumed run appends to the same W&B run id
        m = MetricsLogger(str(tmp_path), enabled=True, world_size=1, flops_per_token=1.0,
                          peak_tflops_per_device=None, tensorboard=False, jsonl=False, device="cpu",
                          train_steps=4, logging_cfg=cfg, run_config={"seed": 1})
        for step in (first_step, first_step + 1):
            m.step_done(8)
            m.log(step, {"loss": 5.0 - step})
        m.write(first_step + 1, {"step": first_step + 1, "valid_shop_loss": 2.5})
        m.close()
    run_id = (tmp_path / "wandb" / "run_id").read_text()
    runs = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert runs, list((tmp_path / "wandb").iterdir())
    data = b"".join(p.read_bytes() for p in runs)
    assert b"valid/shop_loss" in data and b"tokens_per_s" in data and b"eta_s" in data


def test_loss_curves_png(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 2, "valid_shop_loss": 4.5},
        {"step": 3, "loss": 3.5}]))
    png = plot_loss_curves(metrics, tmp_path / "loss.png")
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
