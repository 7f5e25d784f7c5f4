"""Training metrics: throughput, TFLOP/s and MFU from the model's FLOP count, memory, ETA; one
console line, tensorboard scalars, a jsonl file and optionally Weights & Biases (offline works
without a network). Written by global rank 0 only; loss curves as a PNG from the jsonl."""
from __future__ import annotations

import datetime
import json
import logging
import resource
import secrets
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Dense bf16 peak TFLOP/s per GPU, for MFU when logging.peak_tflops_per_device is not set.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "B200": 2250.0}


def peak_tflops(configured: float | None, device: str) -> float | None:
    """Configured peak, else the GPU's by name; None on CPU (MFU is not reported)."""
    if configured is not None:
        return configured
    if device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


def peak_memory_gib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB


class MetricsLogger:
    """Accumulates steps between log lines and writes one record per log step (rank 0)."""

    def __init__(self, run_dir: str, *, enabled: bool, world_size: int, flops_per_token: float,
                 peak_tflops_per_device: float | None, tensorboard: bool, jsonl: bool,
                 device: str, train_steps: int | None = None, logging_cfg=None,
                 run_config: dict | None = None):
        self.enabled, self.world_size, self.device = enabled, world_size, device
        self.flops_per_token, self.peak = flops_per_token, peak_tflops_per_device
        self._tokens, self._steps, self._since = 0, 0, time.perf_counter()
        # ETA from the mean step time of this process (a resumed run starts a new mean).
        self.train_steps, self._run_steps, self._run_start = train_steps, 0, time.perf_counter()
        self._tb = self._jsonl = self._wandb = None
        if not enabled:
            return
        if logging_cfg is not None and logging_cfg.wandb_project:
            self._wandb = WandbSink(run_dir, logging_cfg, run_config or {})
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        if jsonl:
            self._jsonl = open(Path(run_dir) / "metrics.jsonl", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def step_done(self, tokens: int) -> None:
        self._tokens += tokens
        self._steps += 1
        self._run_steps += 1

    def log(self, step: int, values: dict) -> dict:
        """Write values plus throughput since the previous log; returns the record."""
        elapsed = time.perf_counter() - self._since
        tokens_per_s = self._tokens / elapsed if elapsed > 0 else 0.0
        record = {"step": step, **values,
                  "step_time_s": elapsed / max(self._steps, 1),
                  "tokens_per_s": tokens_per_s,
                  "tokens_per_s_per_gpu": tokens_per_s / self.world_size,
                  "tflops_per_s_per_gpu": tokens_per_s * self.flops_per_token / self.world_size / 1e12,
                  "peak_mem_gib": peak_memory_gib(self.device)}
        if self.peak:
            record["mfu_pct"] = 100.0 * record["tflops_per_s_per_gpu"] / self.peak
        if self.train_steps is not None and self._run_steps:
            mean_step_s = (time.perf_counter() - self._run_start) / self._run_steps
            record["eta_s"] = max(self.train_steps - step, 0) * mean_step_s
        self._tokens, self._steps, self._since = 0, 0, time.perf_counter()
        self.write(step, record)
        return record

    def write(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        logger.info(" | ".join(_fmt(k, v) for k, v in record.items()))
        if self._jsonl:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key.replace("valid_", "valid/"), value, step)
        if self._wandb:
            self._wandb.log(step, record)

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()
        if self._wandb:
            self._wandb.close()


class WandbSink:
    """A Weights & Biases run under <run_dir>/wandb; its id is kept there so that a resumed run
    continues the same W&B run. logging.wandb_mode=offline needs no network (`wandb sync` later)."""

    def __init__(self, run_dir: str, cfg, run_config: dict):
        import wandb

        root = Path(run_dir) / "wandb"
        root.mkdir(parents=True, exist_ok=True)
        id_file = root / "run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id)
        self.run = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or Path(run_dir).name,
                              id=run_id, resume="allow", dir=str(run_dir), mode=cfg.wandb_mode,
                              config=run_config)

    def log(self, step: int, record: dict) -> None:
        self.run.log({k.replace("valid_", "valid/"): v for k, v in record.items()
                      if k != "step" and isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        import wandb

        self.run.finish()
        wandb.teardown()  # ends wandb's service process now, not at interpreter exit


def plot_loss_curves(metrics_path: str | Path, png_path: str | Path) -> Path:
    """Training loss and every validation loss against step, from metrics.jsonl, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    curves: dict[str, dict[int, float]] = {}
    for line in Path(metrics_path).read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key == "loss" or (key.startswith("valid_") and key.endswith("_loss")):
                curves.setdefault(key, {})[record["step"]] = value  # a redone step keeps the last
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in curves.items():
        steps = sorted(points)
        ax.plot(steps, [points[s] for s in steps], marker="o" if key != "loss" else None,
                label="train" if key == "loss" else key[len("valid_"):-len("_loss")] + " (valid)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)


def _fmt(key: str, value) -> str:
    if key == "eta_s":
        return f"eta {datetime.timedelta(seconds=round(value))}"
    if isinstance(value, float):
        return f"{key} {value:.4g}" if abs(value) < 1e4 else f"{key} {value:,.0f}"
    return f"{key} {value}"
