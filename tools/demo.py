"""The main job on a small embedded default, end to end on CPU (`make demo`):

1. generate the demo corpus (synthetic multilingual e-commerce + Python's stdlib docstrings);
2. tokenize it with the Llama 3 tokenizer into megatron indexed datasets (+ held-out sets);
3. continued pretraining of the tiny Llama with tp=2, pp=2 (4 processes): stop with a
   checkpoint half-way (train.exit_interval), then resume to the end, the loss falling;
4. export the checkpoint to Hugging Face format and generate with transformers.
Each step runs the same command a user would. The run directory is the demo's: on a rerun it
removes only what it made itself, and it refuses a non-empty directory it did not make.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROCESSES = 4  # tp=2 x pp=2
MARKER = ".elama-demo"
# Everything the demo writes into its run directory; a rerun removes these names and nothing else.
ENTRIES = ("corpus", "corpus_valid", "data", "train", "hf", "eval", "loss_curves.png", "tokens.png",
           MARKER)
FULL = {"corpus": {}, "valid_docs": 400, "train": [], "exit_at": 30, "steps": 60}
# --quick: the same commands on a smaller corpus and a few steps (the test suite's version).
QUICK = {"corpus": {"ecommerce_docs": 400, "general_bytes": 300_000}, "valid_docs": 100,
         "train": ["train.train_steps=4", "train.eval_interval=2", "checkpoint.save_interval=2",
                   "optim.warmup_steps=1", "train.log_interval=1"], "exit_at": 2, "steps": 4}


class DemoError(Exception):
    """A demo step failed or its run directory cannot be used: one line, exit 1 or 2."""


def prepare_run_dir(run_dir: Path) -> None:
    """Use a new or empty directory, or one the demo made (only its ENTRIES are removed)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise DemoError(f"--run-dir {run_dir} is a file: name a new or empty directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not (run_dir / MARKER).is_file():
            raise DemoError(f"--run-dir {run_dir} is not empty and was not made by the demo (no "
                            f"{MARKER} in it): nothing removed; name a new or empty directory")
        for name in ENTRIES:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MARKER).write_text("made by tools/demo.py, which removes only its own entries "
                                  f"({', '.join(ENTRIES)}) when rerun here\n")


def run(cmd: list[str], what: str) -> None:
    print("\n$ " + " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=REPO).returncode
    if code:
        raise DemoError(f"{what} failed with exit code {code}")


def make_corpus(run_dir: Path, mode: dict) -> dict[str, list[str]]:
    """Train and held-out jsonl files per corpus. Held-out e-commerce comes from another seed;
    held-out general text is the last tenth of the docstrings, kept out of training."""
    from elama.data.demo_corpus import write_demo_corpus

    train = write_demo_corpus(str(run_dir / "corpus"), seed=0, **mode["corpus"])
    valid = write_demo_corpus(str(run_dir / "corpus_valid"), seed=1,
                              ecommerce_docs=mode["valid_docs"], general_bytes=0)
    lines = Path(train["general"][0]).read_text(encoding="utf-8").splitlines(keepends=True)
    cut = len(lines) * 9 // 10
    Path(train["general"][0]).write_text("".join(lines[:cut]), encoding="utf-8")
    Path(valid["general"][0]).write_text("".join(lines[cut:]), encoding="utf-8")
    return {"ecommerce": train["ecommerce"], "general": train["general"],
            "valid_ecommerce": valid["ecommerce"], "valid_general": valid["general"]}


def tokenize(corpus: dict[str, list[str]], run_dir: Path) -> None:
    """The four datasets are independent: tokenize them concurrently (start-up dominates)."""
    data_dir, procs = run_dir / "data", []
    for name, paths in corpus.items():
        keys = ["--text-key", "text"] if "general" in name else [
            "--text-key", "title", "--text-key", "aspects", "--text-key", "description"]
        cmd = [sys.executable, "tools/preprocess_data.py", "--input", *paths, "--output-prefix",
               str(data_dir / name), *keys, "--language-key", "lang", "--merge", "--workers", "1",
               "--no-progress"]
        print("\n$ " + " ".join(cmd), flush=True)
        procs.append(subprocess.Popen(cmd, cwd=REPO))
    if any(p.wait() for p in procs):
        raise DemoError("tokenization failed (see its messages above)")
    run([sys.executable, "tools/data_stats.py", "--blend", "0.5", str(data_dir / "ecommerce"),
         "0.5", str(data_dir / "general"), "--token-budget", "1T", "--plot",
         str(run_dir / "tokens.png")], "data_stats")


def train(run_dir: Path, extra: list[str]) -> str:
    """One torchrun of elama.train; returns the run's outcome line (outcome.json, which keeps
    the exit code torchrun turns into 1)."""
    data_dir = run_dir / "data"
    blend = (f"data.train_blend=[{{prefix:{data_dir / 'ecommerce'},weight:0.5}},"
             f"{{prefix:{data_dir / 'general'},weight:0.5}}]")
    valid = (f"data.valid_blends=[{{name:ecommerce,blend:[{{prefix:{data_dir / 'valid_ecommerce'},"
             f"weight:1}}]}},{{name:general,blend:[{{prefix:{data_dir / 'valid_general'},weight:1}}]}}]")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(PROCESSES),
           "-m", "elama.train", "experiment=cpt_tiny_cpu", blend, valid,
           f"checkpoint.run_dir={run_dir / 'train'}", *extra]
    print("\n$ " + " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=REPO).returncode
    from elama.outcome import read_outcome

    outcome = read_outcome(run_dir / "train") or {}
    line = outcome.get("line", "no outcome recorded")
    if code:
        raise DemoError(f"training ({' '.join(extra) or 'resume'}): {line}")
    print(f"outcome: {line} ({run_dir / 'train' / 'outcome.json'})")
    return line


def export_and_generate(run_dir: Path, steps: int) -> str:
    """The trained checkpoint as a Hugging Face model, loaded and run by transformers."""
    from elama.convert.export_hf import generate_with_transformers

    hf_dir = run_dir / "hf"
    run([sys.executable, "tools/convert_checkpoint.py", "export", str(run_dir / "train"),
         str(hf_dir), "--no-progress"], "export")
    prompt = "Free shipping on"
    _, ids, text = generate_with_transformers(hf_dir, prompt, max_new_tokens=12)
    print(f"\ntransformers generates from {hf_dir}:\n  {prompt!r} -> {text!r}\n"
          f"  (noise, as expected: a tiny model trained {steps} steps on CPU. The demo shows that "
          "the exported model loads and generates, not that it writes well.)")
    return text


def report_losses(run_dir: Path) -> tuple[float, float]:
    from elama.metrics import plot_loss_curves

    metrics = run_dir / "train" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.open()]
    losses = [r["loss"] for r in records if "loss" in r]
    print(f"\ntraining loss: first {losses[0]:.3f}, last {losses[-1]:.3f}")
    for r in (r for r in records if any(k.startswith("valid_") for k in r)):
        print("step {step}: ".format(**r) + ", ".join(f"{k} {v:.3f}" for k, v in r.items()
                                                     if k.startswith("valid_")))
    print(f"loss curves: {plot_loss_curves(metrics, run_dir / 'loss_curves.png')}")
    return losses[0], losses[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="demo_run",
                        help="the demo's directory, relative to the repository (default: demo_run)")
    parser.add_argument("--quick", action="store_true",
                        help="a smaller corpus and 4 steps: the same commands, in about a third "
                             "of the time (no check that the loss falls)")
    args = parser.parse_args(argv)
    from elama.logs import quiet_warnings

    quiet_warnings()  # this process imports megatron-core too (export, generation)
    sys.stdout.reconfigure(line_buffering=True)  # our lines in order with the commands' output
    mode = QUICK if args.quick else FULL
    run_dir = (REPO / args.run_dir).resolve()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        prepare_run_dir(run_dir)
    except DemoError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    try:
        tokenize(make_corpus(run_dir, mode), run_dir)
        train(run_dir, mode["train"] + [f"train.exit_interval={mode['exit_at']}"])  # stop, saved
        train(run_dir, mode["train"])  # resumes from the checkpoint to the end
        first, last = report_losses(run_dir)
        if not args.quick and not last < first - 1.0:
            raise DemoError(f"the loss did not fall ({first:.3f} -> {last:.3f})")
        export_and_generate(run_dir, mode["steps"])
        from elama.eval.demo import evaluate_demo_run

        evaluate_demo_run(run_dir)  # held-out perplexity before/after training, merge sweep
    except DemoError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    print(f"\ndemo done: {run_dir}")
    return 0


if __name__ == "__main__":
    from elama.lifetime import exit_process

    exit_process(main())
