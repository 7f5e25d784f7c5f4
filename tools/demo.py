"""The main job on a small embedded default, end to end on CPU (`make demo`):

1. generate the demo corpus (synthetic multilingual e-commerce + Python's stdlib docstrings);
2. tokenize it with the Llama 3 tokenizer into megatron indexed datasets (+ held-out sets);
3. continued pretraining of the tiny Llama with tp=2, pp=2 (4 processes): stop with a
   checkpoint half-way (train.exit_interval), then resume to the end, the loss falling;
4. export the checkpoint to Hugging Face format and generate with transformers.
Each step runs the same command a user would.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROCESSES = 4  # tp=2 x pp=2


def run(cmd: list[str], **kwargs) -> None:
    print("\n$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, **kwargs)


def make_corpus(run_dir: Path) -> dict[str, list[str]]:
    """Train and held-out jsonl files per corpus. Held-out e-commerce comes from another seed;
    held-out general text is the last tenth of the docstrings, kept out of training."""
    from elama.data.demo_corpus import write_demo_corpus

    train = write_demo_corpus(str(run_dir / "corpus"), seed=0)
    valid = write_demo_corpus(str(run_dir / "corpus_valid"), seed=1, ecommerce_docs=400,
                              general_bytes=0)
    lines = Path(train["general"][0]).read_text(encoding="utf-8").splitlines(keepends=True)
    cut = len(lines) * 9 // 10
    Path(train["general"][0]).write_text("".join(lines[:cut]), encoding="utf-8")
    Path(valid["general"][0]).write_text("".join(lines[cut:]), encoding="utf-8")
    return {"ecommerce": train["ecommerce"], "general": train["general"],
            "valid_ecommerce": valid["ecommerce"], "valid_general": valid["general"]}


def tokenize(corpus: dict[str, list[str]], data_dir: Path) -> None:
    for name, paths in corpus.items():
        keys = ["--text-key", "text"] if "general" in name else [
            "--text-key", "title", "--text-key", "aspects", "--text-key", "description"]
        run([sys.executable, "tools/preprocess_data.py", "--input", *paths,
             "--output-prefix", str(data_dir / name), *keys, "--language-key", "lang",
             "--merge", "--workers", "2", "--no-progress"])
    run([sys.executable, "tools/data_stats.py", "--blend", "0.5", str(data_dir / "ecommerce"),
         "0.5", str(data_dir / "general"), "--token-budget", "1T"])


def train(run_dir: Path, data_dir: Path, extra: list[str]) -> None:
    blend = (f"data.train_blend=[{{prefix:{data_dir / 'ecommerce'},weight:0.5}},"
             f"{{prefix:{data_dir / 'general'},weight:0.5}}]")
    valid = (f"data.valid_blends=[{{name:ecommerce,blend:[{{prefix:{data_dir / 'valid_ecommerce'},"
             f"weight:1}}]}},{{name:general,blend:[{{prefix:{data_dir / 'valid_general'},weight:1}}]}}]")
    run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(PROCESSES),
         "-m", "elama.train", "experiment=cpt_tiny_cpu", blend, valid,
         f"checkpoint.run_dir={run_dir / 'train'}", *extra])


def export_and_generate(run_dir: Path) -> str:
    """The trained checkpoint as a Hugging Face model, loaded and run by transformers."""
    from elama.convert.export_hf import generate_with_transformers

    hf_dir = run_dir / "hf"
    run([sys.executable, "tools/convert_checkpoint.py", "export", str(run_dir / "train"),
         str(hf_dir)])
    prompt = "Free shipping on"
    _, ids, text = generate_with_transformers(hf_dir, prompt, max_new_tokens=12)
    print(f"\ntransformers generates from {hf_dir}:\n  {prompt!r} -> {text!r}")
    return text


def report_losses(run_dir: Path) -> tuple[float, float]:
    records = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records if "loss" in r]
    valid = [r for r in records if any(k.startswith("valid_") for k in r)]
    print(f"\ntraining loss: first {losses[0]:.3f}, last {losses[-1]:.3f}")
    for r in valid:
        print("step {step}: ".format(**r) + ", ".join(f"{k} {v:.3f}" for k, v in r.items()
                                                     if k.startswith("valid_")))
    return losses[0], losses[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="demo_run", help="everything goes here (recreated)")
    args = parser.parse_args(argv)
    run_dir = (REPO / args.run_dir).resolve()
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data_dir = run_dir / "data"
    tokenize(make_corpus(run_dir), data_dir)
    train(run_dir, data_dir, ["train.exit_interval=30"])  # stop with a checkpoint at step 30
    train(run_dir, data_dir, [])  # resumes from step 30 to the end
    first, last = report_losses(run_dir)
    if not last < first - 1.0:
        print(f"demo: the loss did not fall ({first:.3f} -> {last:.3f})", file=sys.stderr)
        return 1
    export_and_generate(run_dir)
    print(f"\ndemo done: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
