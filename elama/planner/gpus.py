"""The GPUs the planner knows: memory the driver reports, dense tensor-core peaks by precision,
and the bandwidths the communication model uses."""
from __future__ import annotations

from dataclasses import dataclass

MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    """Total device memory as nvidia-smi reports it (an 80 GB H100 shows 81559 MiB)."""
    peak_tflops: dict
    """Dense tensor-core peak by model.precision; fp32 runs on TF32 tensor cores."""
    nvlink_gb_s: float
    """Achievable all-gather/reduce-scatter bus bandwidth per GPU inside a node (NCCL, large
    messages): ~80% of the unidirectional NVLink bandwidth."""
    network_gb_s: float
    """Achievable per-GPU bandwidth between nodes (one NIC per GPU, ~80% of line rate)."""
    hbm_tb_s: float
    gpus_per_node: int = 8

    def peak(self, precision: str) -> float:
        if precision not in self.peak_tflops:
            raise ValueError(f"{self.name} has no {precision} tensor cores: use model.precision="
                             f"{'|'.join(self.peak_tflops)}")
        return self.peak_tflops[precision]


# Datasheet peaks (dense, no sparsity): H100/H200 SXM 989 BF16, 1979 FP8, 495 TF32; A100 SXM 312
# BF16, 156 TF32 and no FP8. NVLink 4 moves 450 GB/s per direction, NVLink 3 300 GB/s; DGX-class
# nodes give each GPU a 400 Gb/s (H100/H200) or 200 Gb/s (A100) NIC.
GPUS = {
    "h100-80gb": Gpu("h100-80gb", 81559 * MIB / GIB, {"bf16": 989.4, "fp8": 1978.9, "fp32": 494.7},
                     nvlink_gb_s=360.0, network_gb_s=40.0, hbm_tb_s=3.35),
    "h200-141gb": Gpu("h200-141gb", 143771 * MIB / GIB, {"bf16": 989.4, "fp8": 1978.9, "fp32": 494.7},
                      nvlink_gb_s=360.0, network_gb_s=40.0, hbm_tb_s=4.8),
    "a100-80gb": Gpu("a100-80gb", 81920 * MIB / GIB, {"bf16": 312.0, "fp32": 156.0},
                     nvlink_gb_s=240.0, network_gb_s=20.0, hbm_tb_s=2.04),
    "a100-40gb": Gpu("a100-40gb", 40960 * MIB / GIB, {"bf16": 312.0, "fp32": 156.0},
                     nvlink_gb_s=240.0, network_gb_s=20.0, hbm_tb_s=1.555),
}
