"""Training metrics: throughput, TFLOP/s and MFU from the model's FLOP count, memory; one console
line, tensorboard scalars and a jsonl file. Written by global rank 0 only."""
from __future__ import annotations

import json
import logging
import resource
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
                 device: str):
        self.enabled, self.world_size, self.device = enabled, world_size, device
        self.flops_per_token, self.peak = flops_per_token, peak_tflops_per_device
        self._tokens, self._steps, self._since = 0, 0, time.perf_counter()
        self._tb = self._jsonl = None
        if not enabled:
            return
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        if jsonl:
            self._jsonl = open(Path(run_dir) / "metrics.jsonl", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def step_done(self, tokens: int) -> None:
        self._tokens += tokens
        self._steps += 1

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

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()


def _fmt(key: str, value) -> str:
    if isinstance(value, float):
        return f"{key} {value:.4g}" if abs(value) < 1e4 else f"{key} {value:,.0f}"
    return f"{key} {value}"
