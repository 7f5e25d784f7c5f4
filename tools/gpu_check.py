"""The GPU check's steps (tools/gpu_check.sh runs them on one GPU): bf16 training of a ~1B Llama
with the local spec and the distributed optimizer; a run killed with -9 after its step-10 save
and resumed, bitwise equal to the straight run; logits of the checkpoint against transformers on
the exported model; tokens/s and MFU as figure lines. `--plan` prints the commands (on any machine).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS, SAVE_AT = 20, 10
MODEL = ["model=tiny", "model.hidden_size=2048", "model.num_layers=16",
         "model.num_attention_heads=16", "model.num_query_groups=8", "model.kv_channels=128",
         "model.ffn_hidden_size=8192", "model.vocab_size=128256", "model.precision=bf16",
         "model.transformer_impl=local"]
RUN = ["device=cuda", "data=synthetic", "data.seq_len_tokens=2048", "train.micro_batch_size=2",
       "train.global_batch_size=16", "parallel.distributed_optimizer=true",
       "logging.tensorboard=false", f"checkpoint.save_interval={SAVE_AT}"]


def _argv(run_dir: Path, steps: int = STEPS) -> list[str]:
    return [sys.executable, "-m", "elama.train", *MODEL, *RUN, f"train.train_steps={steps}",
            f"checkpoint.run_dir={run_dir}"]


def _start(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": os.environ.get("MASTER_PORT", "29511")}
    run_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(_argv(run_dir), cwd=REPO, env=env,
                            stdout=open(run_dir / "train.log", "ab"), stderr=subprocess.STDOUT)


def _losses(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


def _tracker(run_dir: Path) -> str:
    path = run_dir / "latest_checkpointed_iteration.txt"
    return path.read_text().strip() if path.exists() else ""


def _logits_gap(run_dir: Path, hf_dir: Path) -> float:
    """Max |elama - transformers| over the logits of one sequence, both bf16 on the GPU."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    ids = np.random.default_rng(0).integers(0, 128256, size=(1, 256)).astype(np.int64)
    np.save(hf_dir.parent / "ids.npy", ids)
    subprocess.run([sys.executable, "tools/logits.py", str(run_dir), str(hf_dir.parent / "ids.npy"),
                    str(hf_dir.parent / "elama.npy"), "device=cuda"], cwd=REPO, check=True)
    ours = torch.from_numpy(np.load(hf_dir.parent / "elama.npy")).float()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16).cuda().eval()
    with torch.no_grad():
        theirs = model(torch.from_numpy(ids).cuda()).logits.float().cpu()
    return float((ours - theirs).abs().max())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--plan", action="store_true", help="print the steps' commands and exit")
    args = p.parse_args()
    if args.plan:
        print(" ".join(_argv(args.workdir / "straight")))
        return 0
    straight, killed = args.workdir / "straight", args.workdir / "killed"
    assert _start(straight).wait() == 0, (straight / "train.log").read_text()[-3000:]
    ranks = _start(killed)
    while _tracker(killed) != str(SAVE_AT):
        time.sleep(0.2)
    ranks.send_signal(signal.SIGKILL)
    ranks.wait()
    assert _start(killed).wait() == 0, (killed / "train.log").read_text()[-3000:]
    want, got = _losses(straight), _losses(killed)
    exact = all(want[s]["loss"] == got[s]["loss"] for s in range(1, STEPS + 1))
    hf = args.workdir / "hf"
    subprocess.run([sys.executable, "tools/convert_checkpoint.py", "export", str(straight), str(hf),
                    "--no-tokenizer", "--no-progress"], cwd=REPO, check=True)
    gap = _logits_gap(straight, hf)
    last = want[STEPS]
    print(f"resume_after_kill_bitwise_equal: {int(exact)} (goal >= 1)")
    print(f"logits_max_abs_diff_vs_transformers_bf16: {gap:.4f} (goal <= 0.25)")
    print(f"tokens_per_s_per_gpu: {last['tokens_per_s_per_gpu']:.0f} (goal >= 1)")
    print(f"mfu_pct: {last.get('mfu_pct', float('nan')):.1f} (goal >= 20)")
    return 0 if exact and gap <= 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
