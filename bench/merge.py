"""Benchmark of elama.merge on two generated ~1B-parameter bf16 checkpoints (500 MB shards), every
method (linear, SLERP, task arithmetic, TIES at density 0.5): time vs the floor, a raw byte copy
of the same files (plain unbuffered read + write, bench/workers.py's raw_copy: both inputs read,
the output's bytes written) measured in the same run and alternated with the merges; for SLERP
and TIES, which read their inputs 2 and 3 times, also vs that copy plus a raw read of the inputs
per extra pass; and peak RSS above each process's baseline vs the largest input shard.
Usage: python bench/merge.py [--workdir DIR] [--keep] [--repeats 2]"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import workers  # bench/ is the script's directory
from hfgen import llama_config, param_count, write_random_llama

SHARD_BYTES = 500 * 10**6
# Every run is a fresh subprocess that loads its modules, then waits while the previous run's
# output is deleted and synced (bench/workers.py says why in that order); inputs in the page
# cache. A raw copy runs before and after each merge, a method's figure is the ratio of
# its mean time to the mean of the copies around it.
METHODS = {"linear": dict(alpha=0.5), "slerp": dict(alpha=0.5),
           "task_arithmetic": dict(alpha=0.5), "ties": dict(alpha=1.0, density=0.5)}
# Times each method reads its inputs (elama.merge_stream): SLERP's angle and TIES's two radix
# select passes come before any output. A second figure compares each method with the raw copy
# plus that many more raw reads of the inputs (a read-only floor run alternated with the rest).
READ_PASSES = {"linear": 1, "slerp": 2, "task_arithmetic": 1, "ties": 3}


def _worker_raw(base: Path, adapted: Path, out: Path) -> dict:
    """The floor: both inputs read and the base's bytes (the output's size) written with plain
    file I/O, no format at all."""
    return {"seconds": workers.raw_copy(sorted(adapted.glob("*.safetensors")),
                                        sorted(base.glob("*.safetensors")), out)}


def _worker_merge(method: str, base: Path, adapted: Path, out: Path) -> dict:
    from elama.merge import MergeSpec, merge_checkpoints

    workers.wait_for_go()
    baseline = workers.rss_bytes("VmRSS")
    start = time.perf_counter()
    merge_checkpoints(base, [adapted], out, MergeSpec(method, **METHODS[method]),
                      max_shard_bytes=SHARD_BYTES, progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "baseline_rss": baseline, "peak_rss": workers.rss_bytes("VmHWM")}


def _worker_read(base: Path, adapted: Path, out: Path) -> dict:
    """One more read pass's floor: both inputs read with plain file I/O, nothing written."""
    return {"seconds": workers.raw_copy(sorted(base.glob("*.safetensors"))
                                        + sorted(adapted.glob("*.safetensors")), [], out)}


WORKERS = {"raw": _worker_raw, "read": _worker_read,
           **{m: (lambda *a, _m=m: _worker_merge(_m, *a)) for m in METHODS}}


def _run(kind: str, base: Path, adapted: Path, out: Path, stale: list[Path]) -> dict:
    """One timed run writing out; `stale` (earlier runs' output) is deleted once the worker is
    ready, then everything is synced: no dirty pages left to write back during this run."""
    def before() -> None:
        if kind == "read":  # nothing written: the previous writer's output stays, dirty (below)
            return
        for path in stale:
            shutil.rmtree(path)
        os.sync()
    result = workers.run([sys.executable, __file__, "--worker", kind, str(base), str(adapted),
                          str(out)], before)
    sizes = [p.stat().st_size for p in out.glob("*.safetensors")]
    result["out_bytes"], result["largest_shard"] = sum(sizes), max(sizes, default=0)
    if kind == "linear":
        _check_merged(base, adapted, out)
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
    _run("raw", base, adapted, work / "warmup", [])  # inputs into the page cache for every run
    order = ["raw"] + [k for _ in range(repeats) for m in METHODS for k in (m, "raw", "read")]
    # A read run neither deletes nor syncs: every writing run, raw copy or merge, starts right
    # after the previous writer's output is dropped, its pages still hot (bench/workers.py),
    # whether a read ran in between or not.
    runs, stale = [], [work / "warmup"]
    for i, kind in enumerate(order):
        runs.append((kind, _run(kind, base, adapted, work / f"run{i}", stale)))
        stale = stale + [work / f"run{i}"] if kind == "read" else [work / f"run{i}"]
    for path in stale:
        shutil.rmtree(path)
    for kind, r in runs:
        rss = (f", peak RSS +{(r['peak_rss'] - r['baseline_rss']) / 1e6:.0f} MB"
               if kind in METHODS else "")
        print(f"{kind}: {r['seconds']:.2f} s, wrote {r['out_bytes'] / 1e9:.3f} GB{rss}")
    largest = max([largest] + [r["largest_shard"] for _, r in runs])
    mean = {k: statistics.mean(r["seconds"] for kind, r in runs if kind == k)
            for k in ("raw", "read")}
    print(f"largest shard {largest / 1e6:.0f} MB; raw copy (floor) mean {mean['raw']:.2f} s, "
          f"raw read of both inputs mean {mean['read']:.2f} s")
    print("\n".join(_figures(runs, largest, mean["read"])))


def _figures(runs: list, largest: int, read_s: float) -> list[str]:
    """Per method: time vs the raw copies just before and after each of its runs, time vs those
    plus read_s per extra read pass, peak RSS vs the largest shard."""
    def copies_around(i: int) -> float:
        """The mean of the nearest raw copies before and after run i."""
        before = next(r for kind, r in reversed(runs[:i]) if kind == "raw")
        after = next(r for kind, r in runs[i + 1:] if kind == "raw")
        return statistics.mean([before["seconds"], after["seconds"]])

    figures = []
    for method, passes in READ_PASSES.items():
        copies = [(r["seconds"], copies_around(i))
                  for i, (kind, r) in enumerate(runs) if kind == method]
        rss = max(r["peak_rss"] - r["baseline_rss"] for kind, r in runs if kind == method)
        figures.append(f"{method}_time_vs_raw_copy: "
                       f"{statistics.mean(s / c for s, c in copies):.3f} (goal <= 1.5)")
        if passes > 1:
            same = statistics.mean(s / (c + (passes - 1) * read_s) for s, c in copies)
            figures.append(f"{method}_time_vs_raw_copy_and_reads: {same:.3f} (goal <= 1.5)")
        figures.append(f"{method}_peak_rss_vs_largest_shard: {rss / largest:.3f} (goal <= 3.0)")
    return figures


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
