"""Preemption: SIGTERM or SIGUSR1 (Slurm's --signal, scancel) asks for a checkpoint at the next
step boundary; the run then exits with REQUEUE_EXIT_CODE, which launch/train.sbatch requeues on."""
from __future__ import annotations

import logging
import signal

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionWatch:
    """Records a preemption signal; `requested()` agrees across ranks (the signal may reach them
    at different times), so every rank saves at the same step."""

    def __init__(self, device: torch.device):
        self._flag = False
        self._device = device
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}

    def _handle(self, signum, frame):
        if not self._flag:
            logger.warning("received %s: saving at the next step boundary, then exiting with %d "
                           "for requeue", signal.Signals(signum).name, REQUEUE_EXIT_CODE)
        self._flag = True

    def requested(self) -> bool:
        """Collective: one int all-reduced (MAX) per step, a CPU-GPU sync point on GPU."""
        flag = torch.tensor([int(self._flag)], dtype=torch.int32, device=self._device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def close(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
