"""The findings study end to end, with elama's own commands: corpus -> tools/preprocess_data.py ->
base pretraining (python -m elama.train under torch.distributed.run) -> continued pretraining
variants from the base -> tools/convert_checkpoint.py export -> tools/merge_models.py sweep ->
scores -> checks -> REPORT.md. Everything lands in one run directory.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from elama.findings.commands import (Command, StageTimes, python, run_stage, self_cpu_s,
                                     torchrun)
from elama.findings.corpus import CorpusSizes, write_findings_corpus

# The base runs alone, single-process with two threads; the variants run single-process, one
# thread each, two side by side.
BASE_THREADS = 2
MERGE_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Alpha 0 and 1 are checked to be the base and the recipe weight for weight, so only the merges
# in between are evaluated (each evaluation is a tenth of the time budget).
MERGES_EVALUATED = tuple(a for a in MERGE_ALPHAS if 0 < a < 1)


@dataclass(frozen=True)
class Variant:
    name: str
    replay: bool
    """50% domain / 50% general replay; False: 100% domain."""
    lr_fraction: float
    """Peak LR as a fraction of the base's (min LR keeps the base's 10:1 ratio)."""
    label: str


VARIANTS = (
    Variant("recipe", True, 0.10, "recipe: 50% replay, LR 10%"),
    Variant("no_replay", False, 0.10, "no replay (100% domain), LR 10%"),
    Variant("lr_1pct", True, 0.01, "50% replay, LR 1%"),
    Variant("lr_100pct", True, 1.00, "50% replay, LR 100%"),
)
LR_VARIANTS = {"lr_1pct": 0.01, "recipe": 0.10, "lr_100pct": 1.00}


@dataclass(frozen=True)
class StudyOptions:
    run_dir: Path
    base_steps: int | None = None
    """None: conf/experiment/findings_base.yaml's train_steps."""
    cpt_steps: int | None = None
    """None: conf/experiment/findings_cpt.yaml's train_steps."""
    sizes: CorpusSizes = CorpusSizes()
    eval_tokens_per_lang: int = 1024
    """Predicted held-out tokens per corpus and language."""
    seed: int = 1234


def _blend(entries: list[tuple[Path, float]]) -> str:
    return "[" + ",".join(f"{{prefix:{p},weight:{w:g}}}" for p, w in entries) + "]"


def _steps_overrides(steps: int | None, default_warmup_fraction: float) -> list[str]:
    if steps is None:
        return []
    warmup = max(1, round(steps * default_warmup_fraction))
    return [f"train.train_steps={steps}", f"optim.warmup_steps={warmup}",
            f"train.eval_interval={max(1, steps // 4)}"]


def base_lr() -> tuple[float, float]:
    """The base's peak and minimum LR, from its experiment config (the variants scale them)."""
    from elama.config import load_config

    cfg = load_config(["experiment=findings_base", "data=synthetic"])
    return cfg.optim.lr, cfg.optim.min_lr


def train_commands(opts: StudyOptions, data: Path) -> tuple[Command, list[Command]]:
    runs = opts.run_dir / "runs"
    valid = ("data.valid_blends=["
             f"{{name:domain,blend:{_blend([(data / 'valid_ecommerce', 1)])}}},"
             f"{{name:general,blend:{_blend([(data / 'valid_general', 1)])}}}]")
    common = [valid, f"seed={opts.seed}"]
    base = Command("train_base", torchrun(
        1, "-m", "elama.train", "experiment=findings_base",
        f"data.train_blend={_blend([(data / 'general', 1)])}", *common,
        f"checkpoint.run_dir={runs / 'base'}", *_steps_overrides(opts.base_steps, 0.05)),
        threads=BASE_THREADS)
    lr, min_lr = base_lr()
    variants = []
    for v in VARIANTS:
        blend = [(data / "ecommerce", 0.5), (data / "general", 0.5)] if v.replay else \
            [(data / "ecommerce", 1.0)]
        variants.append(Command(f"train_{v.name}", torchrun(
            1, "-m", "elama.train", "experiment=findings_cpt", f"data.train_blend={_blend(blend)}",
            *common, f"optim.lr={lr * v.lr_fraction:g}", f"optim.min_lr={min_lr * v.lr_fraction:g}",
            f"checkpoint.init_from={runs / 'base'}", f"checkpoint.run_dir={runs / v.name}",
            *_steps_overrides(opts.cpt_steps, 0.05))))
    return base, variants


def tokenize_commands(corpus: dict, data: Path) -> list[Command]:
    names = ("general", "ecommerce", "valid_general", "valid_ecommerce")
    return [Command(f"tokenize_{n}", python(
        "tools/preprocess_data.py", "--input", corpus["paths"][n], "--output-prefix",
        str(data / n), "--text-key", "text", "--language-key", "lang", "--merge",
        "--workers", "1", "--no-progress")) for n in names]


def export_commands(run_dir: Path, names: list[str]) -> list[Command]:
    return [Command(f"export_{n}", python("tools/convert_checkpoint.py", "export",
                                          str(run_dir / "runs" / n), str(run_dir / "hf" / n),
                                          "--no-progress")) for n in names]


def merge_command(run_dir: Path) -> Command:
    hf = run_dir / "hf"
    return Command("merge_sweep", python(
        "tools/merge_models.py", "--base", str(hf / "base"), "--model", str(hf / "recipe"),
        "--alphas", ",".join(f"{a:g}" for a in MERGE_ALPHAS), "--out", str(hf / "merge"),
        "--no-progress"))


def merged_dir(run_dir: Path, alpha: float) -> Path:
    return run_dir / "hf" / "merge" / f"alpha_{alpha:g}"


def max_weight_diff(dir_a: Path, dir_b: Path) -> float:
    """Largest |difference| between two HF directories' tensors (inf if their names differ)."""
    from safetensors.torch import load_file

    def tensors(d):
        return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(f).items()}

    a, b = tensors(dir_a), tensors(dir_b)
    if a.keys() != b.keys() or not a:
        return float("inf")
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def endpoint_diffs(run_dir: Path) -> dict[str, float]:
    hf = run_dir / "hf"
    return {"alpha0_vs_base": max_weight_diff(merged_dir(run_dir, 0.0), hf / "base"),
            "alpha1_vs_recipe": max_weight_diff(merged_dir(run_dir, 1.0), hf / "recipe")}


def run_study(opts: StudyOptions, echo=print) -> dict:
    """Run every stage; returns {"report": REPORT.md's path, "findings", "results"}."""
    from elama.findings.evaluate import evaluate_models, tool_commands
    from elama.findings.report import write_report

    run_dir, times = opts.run_dir, StageTimes()
    logs, data = run_dir / "logs", run_dir / "data"
    t0, c0 = time.perf_counter(), self_cpu_s()
    echo("[1/7] corpus")
    corpus = write_findings_corpus(run_dir / "corpus", opts.sizes)
    times.add("corpus", time.perf_counter() - t0, self_cpu_s() - c0, 1)
    echo("[2/7] tokenize (tools/preprocess_data.py)")
    run_stage("tokenize", tokenize_commands(corpus, data), logs, times, echo=echo)
    base, variants = train_commands(opts, data)
    echo("[3/7] base: pretrain from scratch on general text")
    run_stage("train_base", [base], logs, times, parallel=1, echo=echo)
    echo("[4/7] continued pretraining: recipe and ablations, from the base")
    run_stage("train_variants", variants, logs, times, echo=echo)
    echo("[5/7] export to Hugging Face and merge sweep")
    names = ["base", *(v.name for v in VARIANTS)]
    run_stage("export", export_commands(run_dir, names), logs, times, echo=echo)
    run_stage("merge", [merge_command(run_dir)], logs, times, parallel=1, echo=echo)
    echo("[6/7] evaluate")
    models = {n: run_dir / "hf" / n for n in names}
    models.update({f"merge_{a:g}": merged_dir(run_dir, a) for a in MERGES_EVALUATED})
    scores = evaluate_models(models, corpus["paths"], run_dir / "eval", times,
                             tokens_per_lang=opts.eval_tokens_per_lang, echo=echo)
    echo("[7/7] report")
    commands = tool_commands(models["base"], corpus["paths"], run_dir / "eval",
                             opts.eval_tokens_per_lang)
    return write_report(run_dir, scores, times, corpus["counts"], endpoint_diffs(run_dir),
                        commands)
