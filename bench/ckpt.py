"""Checkpoint save cost on a CPU layout (2 ranks: dp=2, distributed optimizer, a tiny Llama with
Llama 3's 128256-token vocabulary, so optimizer state dominates): seconds blocking and in total
per save, bytes written per rank and bytes moved per rank (counted at torch.distributed's
collectives during the save), for every optimizer format x sync/async, in the same run,
alternated. The reference is the synchronous fully reshardable save (the format elama used
before; every rank gathers the optimizer state of its model-parallel shard).

    python bench/ckpt.py [--repeats 3] [--vocab 128256]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")

VARIANTS = [("fully_reshardable", False), ("dp_reshardable", True), ("fully_reshardable", True),
            ("dp_reshardable", False)]
REFERENCE = ("fully_reshardable", False)
COLLECTIVES = ("all_gather", "all_gather_into_tensor", "gather", "broadcast", "all_reduce",
               "reduce_scatter_tensor", "scatter", "all_gather_object", "gather_object",
               "broadcast_object_list")


class MovedBytes:
    """Counts the bytes of the tensors this rank's collectives write into while enabled (their
    first argument: the gathered output, the broadcast or reduced tensor); pickled objects are
    not visible here and count 0."""

    def __init__(self):
        import torch.distributed as dist

        self.bytes, self.enabled = 0, False
        for name in COLLECTIVES:
            original = getattr(dist, name)

            def counted(*args, _original=original, **kwargs):
                if self.enabled and args:  # the first argument receives: output or in place
                    self.bytes += _tensor_bytes(args[:1])
                return _original(*args, **kwargs)

            setattr(dist, name, counted)


def _tensor_bytes(values) -> int:
    import torch

    total = 0
    for v in values:
        if torch.is_tensor(v):
            total += v.numel() * v.element_size()
        elif isinstance(v, (list, tuple)):
            total += _tensor_bytes(v)
    return total


def _rank_files_bytes(iter_dir: Path, rank: int) -> int:
    return sum(p.stat().st_size for p in iter_dir.rglob(f"__{rank}_*.distcp"))


def _worker(rank: int, port: int, work: str, vocab: int, repeats: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from elama import checkpoint
    from elama.config import load_config
    from elama.trainer import Trainer

    cfg = load_config(["model=tiny", f"model.vocab_size={vocab}", "model.precision=fp32",
                       "data=synthetic", "data.seq_len_tokens=32", "train.micro_batch_size=1",
                       "train.global_batch_size=2", "train.train_steps=1",
                       "parallel.distributed_optimizer=true", "logging.tensorboard=false",
                       f"checkpoint.run_dir={work}/train"])
    trainer = Trainer(cfg, 2)
    trainer.train()  # one step: Adam state exists
    moved = MovedBytes()
    rows = []
    for rep in range(repeats):
        for i, (fmt, async_save) in enumerate(VARIANTS):
            saver = checkpoint.Saver(optimizer_format=fmt, async_save=async_save)
            run_dir = Path(work) / f"{fmt}-{async_save}-{rep}"
            dist.barrier()
            moved.bytes, moved.enabled = 0, True
            start = time.perf_counter()
            saver.save(run_dir, 1, model=trainer.model, optimizer=trainer.optimizer,
                       meta={"step": 1}, layout=trainer.dims.describe(), keep_last=1)
            blocking = time.perf_counter() - start
            moved.enabled = False
            saver.wait()
            total = time.perf_counter() - start
            saver.close()
            rows.append({"format": fmt, "async": async_save, "blocking_s": blocking,
                         "total_s": total, "moved": moved.bytes,
                         "written": _rank_files_bytes(run_dir / "iter_0000001", rank)})
    trainer.close()
    results.put((rank, json.dumps(rows)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab", type=int, default=128256)
    args = p.parse_args()
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="elama-bench-ckpt-") as work:
        port = _free_port()
        procs = [ctx.Process(target=_worker, args=(r, port, work, args.vocab, args.repeats, results))
                 for r in range(2)]
        for proc in procs:
            proc.start()
        by_rank = dict(results.get(timeout=1800) for _ in procs)
        for proc in procs:
            proc.join()
    rows = {r: json.loads(v) for r, v in by_rank.items()}
    figures = {}
    for fmt, async_save in VARIANTS:
        mine = [[row for row in rows[r] if (row["format"], row["async"]) == (fmt, async_save)]
                for r in sorted(rows)]
        # a save is as slow as its slowest rank: the max over ranks, the median over repeats
        blocking = statistics.median(max(rs[i]["blocking_s"] for rs in mine) for i in range(args.repeats))
        total = statistics.median(max(rs[i]["total_s"] for rs in mine) for i in range(args.repeats))
        written = max(rs[0]["written"] for rs in mine)
        moved = max(rs[0]["moved"] for rs in mine)
        figures[(fmt, async_save)] = blocking
        print(f"{fmt:17s} {'async' if async_save else 'sync ':5s}: blocking {blocking:.2f} s, "
              f"total {total:.2f} s, written {written / 1e6:.1f} MB/rank, moved "
              f"{moved / 1e6:.1f} MB/rank")
    ref = figures[REFERENCE]
    print("(a busy machine slows every variant alike: the variants alternate within each repeat)")
    print(f"fast_save_blocking_vs_sync_reshardable: {figures[('dp_reshardable', True)] / ref:.3f} "
          "(goal <= 0.5)")


if __name__ == "__main__":
    main()
