"""Generator states of a rank (Python, NumPy, torch, megatron's tensor-parallel RNG tracker), for
checkpoints: restoring them makes a resumed run draw the same random numbers (dropout, sampling)."""
from __future__ import annotations

import random

import numpy as np
import torch
from megatron.core import tensor_parallel


def get_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(),
              "torch": torch.get_rng_state(),
              "tracker": {k: v.clone() if torch.is_tensor(v) else v
                          for k, v in tensor_parallel.get_cuda_rng_tracker().get_states().items()}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(states["tracker"])
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"])
