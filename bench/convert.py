"""Benchmark of HF <-> elama conversion on a generated ~1B-parameter bf16 Llama (500 MB shards):
import and export time vs the floor, a raw byte copy of the same files (plain unbuffered file
read + write: bench/workers.py's raw_copy) in the same run, alternated; peak RSS above each
process's baseline vs the largest HF shard (import streams tensor by tensor) and vs the model's
bytes; and the 70B preset's plan of import writes (a meta-device dry run). The export is
checked bitwise against the source.
Usage: python bench/convert.py [--workdir DIR] [--keep]"""
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

import workers  # bench/ is the script's directory
from hfgen import llama_config, param_count, write_random_llama

SHARD_BYTES = 500 * 10**6
# Each run is a fresh subprocess that loads its modules, then waits while the previous run's
# output is deleted and synced (bench/workers.py says why in that order); inputs in the page cache.
# Floor and conversions alternate (a floor run between each two of each conversion's); a figure is
# the ratio of mean times, so a slow moment on a shared machine weighs on both sides.
ORDER = ["floor"] + ["import", "export", "floor"] * 3


def _worker_floor(work: Path, out: Path) -> dict:
    """The HF shards' bytes read once and written once with plain file I/O, no format at all."""
    return {"seconds": workers.raw_copy([], sorted((work / "hf").glob("*.safetensors")), out)}


def _worker_import(work: Path, out: Path) -> dict:
    from elama.convert.import_hf import import_hf

    workers.wait_for_go()
    baseline = workers.rss_bytes("VmRSS")
    start = time.perf_counter()
    import_hf(work / "hf", out, progress=False)
    return {"seconds": time.perf_counter() - start, "baseline_rss": baseline,
            "peak_rss": workers.rss_bytes("VmHWM")}


def _worker_export(work: Path, out: Path) -> dict:
    from elama.convert.export_hf import export_hf

    workers.wait_for_go()
    baseline = workers.rss_bytes("VmRSS")
    start = time.perf_counter()
    # The bench model's 32k vocabulary is not Llama 3's: weights and configs only.
    export_hf(work / "elama", out, with_tokenizer=False, max_shard_bytes=SHARD_BYTES, progress=False)
    return {"seconds": time.perf_counter() - start, "baseline_rss": baseline,
            "peak_rss": workers.rss_bytes("VmHWM")}


WORKERS = {"floor": _worker_floor, "import": _worker_import, "export": _worker_export}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _run(kind: str, work: Path, out: Path, stale: Path | None = None) -> dict:
    """One timed run writing out; `stale` (the previous run's output) is deleted once the worker
    is ready, then everything is synced: no dirty pages left to write back during this run."""
    def before() -> None:
        if stale is not None:
            shutil.rmtree(stale)
        os.sync()
    result = workers.run([sys.executable, __file__, "--worker", kind, str(work), str(out)], before,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    result["out_bytes"] = _dir_bytes(out)
    return result


def _check_bitwise(a_dir: Path, b_dir: Path) -> int:
    import torch

    from elama.convert.hf import HFCheckpointReader

    with HFCheckpointReader(a_dir) as a, HFCheckpointReader(b_dir) as b:
        if sorted(a.names()) != sorted(b.names()):
            raise SystemExit("exported tensor names differ from the source's")
        for name in a.names():
            if not torch.equal(a.get(name), b.get(name)):
                raise SystemExit(f"exported {name} differs from the source")
        return len(a)


def _bench(work: Path) -> None:
    start = time.perf_counter()
    hf = write_random_llama(work / "hf", seed=0, max_shard_bytes=SHARD_BYTES)
    model_bytes = _dir_bytes(hf) - (hf / "config.json").stat().st_size
    shards = sorted(hf.glob("*.safetensors"))
    print(f"generated {param_count(llama_config()) / 1e9:.3f}B parameters, bf16, {len(shards)} "
          f"shards ({model_bytes / 1e9:.3f} GB) in {time.perf_counter() - start:.1f} s")
    # The checkpoint every export reads, and a check that import + export is bitwise.
    _run("import", work, work / "elama")
    _run("export", work, work / "hf_out")
    print(f"import + export bitwise identical to the source: {_check_bitwise(hf, work / 'hf_out')} "
          f"tensors; checkpoint {_dir_bytes(work / 'elama') / 1e9:.3f} GB")
    runs, stale = [], work / "hf_out"
    for i, kind in enumerate(ORDER):
        runs.append((kind, _run(kind, work, work / f"run{i}", stale)))
        stale = work / f"run{i}"
    shutil.rmtree(stale)
    for kind, r in runs:
        rss = f", peak RSS +{(r['peak_rss'] - r['baseline_rss']) / 1e6:.0f} MB" if kind != "floor" else ""
        print(f"{kind}: {r['seconds']:.2f} s, wrote {r['out_bytes'] / 1e9:.3f} GB{rss}")
    secs = {k: [r["seconds"] for kind, r in runs if kind == k] for k in WORKERS}
    floor = statistics.mean(secs["floor"])
    rss = {k: max(r["peak_rss"] - r["baseline_rss"] for kind, r in runs if kind == k)
           for k in ("import", "export")}
    largest = max(s.stat().st_size for s in shards)
    print(f"raw copy floor (read {model_bytes / 1e9:.3f} GB + write the same): {floor:.2f} s "
          f"(runs {', '.join(f'{s:.2f}' for s in secs['floor'])}); largest shard "
          f"{largest / 1e6:.0f} MB")
    print(_plan_70b())
    print(f"import_time_vs_raw_copy: {statistics.mean(secs['import']) / floor:.3f} (goal <= 1.5)")
    print(f"export_time_vs_raw_copy: {statistics.mean(secs['export']) / floor:.3f} (goal <= 1.5)")
    print(f"import_peak_rss_vs_largest_shard: {rss['import'] / largest:.3f} (goal <= 2.0)")
    print(f"export_peak_rss_vs_model_bytes: {rss['export'] / model_bytes:.3f} (goal <= 0.5)")


def _plan_70b() -> str:
    """The 70B preset's import plan, from a fresh process (the meta-device model, no weights)."""
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "tools" / "convert_checkpoint.py"), "import",
                           "--plan", "llama3.1-70b"], check=True, capture_output=True, text=True,
                          cwd=repo)
    return proc.stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", help="where to put ~8 GB of checkpoints (default: the temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    p.add_argument("--worker", nargs=3, metavar=("KIND", "WORK", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        kind, work, out = args.worker
        print(json.dumps(WORKERS[kind](Path(work), Path(out))))
        return
    work = Path(tempfile.mkdtemp(prefix="elama-bench-convert-", dir=args.workdir))
    try:
        _bench(work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
