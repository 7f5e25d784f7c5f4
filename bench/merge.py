"""Benchmark of elama.merge on two generated ~1B-parameter bf16 checkpoints (500 MB shards), every
method (linear, SLERP, task arithmetic, TIES at density 0.5): time vs the floor, a raw byte copy
of the same files (plain read + write through one buffer: both inputs read, the output's bytes
written) measured in the same run and alternated with the merges, and peak RSS above each
process's baseline vs the largest input shard.
Usage: python bench/merge.py [--workdir DIR] [--keep] [--repeats 2]"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hfgen import llama_config, param_count, write_random_llama  # bench/ is the script's directory

SHARD_BYTES = 500 * 10**6
# Every run is a fresh subprocess started after a sync, with the inputs in the page cache and no
# output on disk; a raw copy runs before and after each merge, a method's figure is the ratio of
# its mean time to the mean of the copies around it.
METHODS = {"linear": dict(alpha=0.5), "slerp": dict(alpha=0.5),
           "task_arithmetic": dict(alpha=0.5), "ties": dict(alpha=1.0, density=0.5)}


def _worker_raw(base: Path, adapted: Path, out: Path) -> dict:
    """The floor: both inputs read and the base's bytes (the output's size) written through one
    reused 16 MB buffer with plain file I/O, no format at all."""
    out.mkdir()
    buf = memoryview(bytearray(16 << 20))
    start = time.perf_counter()
    for shard in sorted(adapted.glob("*.safetensors")) + sorted(base.glob("*.safetensors")):
        dst = open(out / shard.name, "wb") if shard.parent == base else None
        with open(shard, "rb", buffering=0) as src:
            while n := src.readinto(buf):
                if dst:
                    dst.write(buf[:n])
        if dst:
            dst.close()
    return {"seconds": time.perf_counter() - start}


def _rss_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process. Not getrusage's ru_maxrss: Linux carries
    that across exec from the parent, so a child of a big process starts with the parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _worker_merge(method: str, base: Path, adapted: Path, out: Path) -> dict:
    from elama.merge import MergeSpec, merge_checkpoints

    baseline = _rss_kib("VmRSS") * 1024
    start = time.perf_counter()
    merge_checkpoints(base, [adapted], out, MergeSpec(method, **METHODS[method]),
                      max_shard_bytes=SHARD_BYTES, progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "baseline_rss": baseline, "peak_rss": _rss_kib("VmHWM") * 1024}


WORKERS = {"raw": _worker_raw, **{m: (lambda *a, _m=m: _worker_merge(_m, *a)) for m in METHODS}}


def _run(kind: str, base: Path, adapted: Path, out: Path) -> dict:
    os.sync()  # no dirty pages from the previous run left to write back during this one
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, str(base), str(adapted),
                           str(out)], check=True, capture_output=True, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    sizes = [p.stat().st_size for p in out.glob("*.safetensors")]
    result["out_bytes"], result["largest_shard"] = sum(sizes), max(sizes)
    if kind == "linear":
        _check_merged(base, adapted, out)
    shutil.rmtree(out)
    return result


def _check_merged(base: Path, adapted: Path, out: Path) -> None:
    """The output is the formula, checked on the final norm and the embedding's first rows."""
    import torch

    from elama.convert.hf import HFCheckpointReader

    with HFCheckpointReader(base) as b, HFCheckpointReader(adapted) as a, HFCheckpointReader(out) as m:
        for name in ("model.norm.weight", "model.embed_tokens.weight"):
            rows = min(64, b.meta(name).rows)
            want = 0.5 * b.get_rows(name, 0, rows).float() + 0.5 * a.get_rows(name, 0, rows).float()
            if not torch.equal(m.get_rows(name, 0, rows), want.to(torch.bfloat16)):
                raise SystemExit(f"merged {name} is not 0.5*base + 0.5*adapted")


def _bench(work: Path, repeats: int) -> None:
    start = time.perf_counter()
    base = write_random_llama(work / "base", seed=0, max_shard_bytes=SHARD_BYTES)
    adapted = write_random_llama(work / "adapted", seed=1, max_shard_bytes=SHARD_BYTES)
    shards = sorted(base.glob("*.safetensors")) + sorted(adapted.glob("*.safetensors"))
    largest = max(s.stat().st_size for s in shards)
    print(f"generated 2 x {param_count(llama_config()) / 1e9:.3f}B parameters, bf16, {len(shards)} "
          f"shards (largest {largest / 1e6:.0f} MB) in {time.perf_counter() - start:.1f} s")
    _run("raw", base, adapted, work / "warmup")  # inputs into the page cache for every run
    order = ["raw"] + [k for _ in range(repeats) for m in METHODS for k in (m, "raw")]
    runs = [(kind, _run(kind, base, adapted, work / f"run{i}")) for i, kind in enumerate(order)]
    for kind, r in runs:
        rss = f", peak RSS +{(r['peak_rss'] - r['baseline_rss']) / 1e6:.0f} MB" if kind != "raw" else ""
        print(f"{kind}: {r['seconds']:.2f} s, wrote {r['out_bytes'] / 1e9:.3f} GB{rss}")
    largest = max([largest] + [r["largest_shard"] for _, r in runs])
    figures = []
    for method in METHODS:
        ratios = [r["seconds"] / statistics.mean([runs[i - 1][1]["seconds"], runs[i + 1][1]["seconds"]])
                  for i, (kind, r) in enumerate(runs) if kind == method]
        rss = max(r["peak_rss"] - r["baseline_rss"] for kind, r in runs if kind == method)
        figures += [f"{method}_time_vs_raw_copy: {statistics.mean(ratios):.3f} (goal <= 1.5)",
                    f"{method}_peak_rss_vs_largest_shard: {rss / largest:.3f} (goal <= 3.0)"]
    print(f"largest shard {largest / 1e6:.0f} MB; raw copy (floor) mean "
          f"{statistics.mean(r['seconds'] for k, r in runs if k == 'raw'):.2f} s")
    print("\n".join(figures))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", help="where to put ~6 GB of checkpoints (default: the temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    p.add_argument("--repeats", type=int, default=2, help="runs of each method")
    p.add_argument("--worker", nargs=4, metavar=("KIND", "BASE", "ADAPTED", "OUT"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        kind, *dirs = args.worker
        print(json.dumps(WORKERS[kind](*map(Path, dirs))))
        return
    work = Path(tempfile.mkdtemp(prefix="elama-bench-merge-", dir=args.workdir))
    try:
        _bench(work, args.repeats)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
