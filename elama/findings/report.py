"""REPORT.md of the findings study: tables of every score, the findings as computed checks, PNG
plots (loss curves, general vs domain per variant, the merge curve), the time each stage took,
and results.json with all of it."""
from __future__ import annotations

import json
from pathlib import Path

from elama.findings.checks import Finding, compute_findings, ppl, sweep_points
from elama.findings.study import LR_VARIANTS, MERGE_ALPHAS, VARIANTS

LABELS = {"base": "base: general text only", **{v.name: v.label for v in VARIANTS}}
# Why a finding can fail at this scale, shown in the closing note only for those that fail.
WHY_NOT = {
    "replay": "the tiny model (64 wide) mostly learns token statistics; a short continued "
              "pretraining moves those toward the domain with or without replay, and replay "
              "protects general text only when the run is long enough to forget it.",
    "lr": "with a few hundred steps the larger learning rates gain more on the domain than they "
          "lose on general text, so the balance point moves; e-Llama's ablation ran 8B models "
          "for billions of tokens, where forgetting at a high LR dominates.",
    "merge": "linear interpolation of weights is not guaranteed to be monotone in loss; for a "
             "tiny model trained briefly the loss surface between the two can bend.",
    "merge_endpoints": "the merge at alpha 0 or 1 should copy a model exactly: a difference "
                       "here is a bug in the export, the merge or the evaluation.",
    "base_settled": "the base needs more steps (--base-steps) for its loss to flatten; the "
                    "other findings then measure forgetting of a model still learning.",
}


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def base_losses(run_dir: Path) -> list[float]:
    """The base's held-out general losses, one per validation."""
    return [r["valid_general_loss"] for r in
            read_metrics(run_dir / "runs" / "base" / "metrics.jsonl") if "valid_general_loss" in r]


def _fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def model_table(scores: dict, names: list[str]) -> str:
    base = scores["base"]
    rows = []
    for n in names:
        s = scores[n]
        rows.append([n, LABELS.get(n, n), _fmt(ppl(s, "domain")), _fmt(ppl(s, "general")),
                     f"{100 * (ppl(s, 'domain') / ppl(base, 'domain') - 1):+.1f}%",
                     f"{100 * (ppl(s, 'general') / ppl(base, 'general') - 1):+.1f}%",
                     _fmt(s["shopbench"]["score"], 3)])
    return _table(["model", "what", "domain ppl", "general ppl", "domain vs base",
                   "general vs base", "ShopBench acc"], rows)


def language_table(scores: dict, names: list[str]) -> str:
    cols = [(c, lang) for c in ("domain", "general")
            for lang in sorted(scores[names[0]]["perplexity"][c]["by_lang"])]
    rows = [[n] + [_fmt(scores[n]["perplexity"][c]["by_lang"][lang]) for c, lang in cols]
            for n in names]
    return _table(["model"] + [f"{c} {lang}" for c, lang in cols], rows)


def task_table(scores: dict, names: list[str]) -> str:
    tasks = sorted(scores[names[0]]["shopbench"]["tasks"])
    rows = [[n] + [f"{scores[n]['shopbench']['tasks'][t]['acc']:.3f} / "
                   f"{scores[n]['shopbench']['tasks'][t]['acc_norm']:.3f}" for t in tasks]
            for n in names]
    return _table(["model"] + [f"{t} (acc / acc_norm)" for t in tasks], rows)


def merge_table(scores: dict) -> str:
    names = {0.0: " (= base)", 1.0: " (= recipe)"}
    rows = [[f"{a:g}{names.get(a, '')}", _fmt(ppl(s, "domain")), _fmt(ppl(s, "general")),
             _fmt(s["shopbench"]["score"], 3)] for a, s in sweep_points(scores, MERGE_ALPHAS)]
    return _table(["alpha (share of the recipe's weights)", "domain ppl", "general ppl",
                   "ShopBench acc"], rows)


def times_table(times) -> str:
    rows = [[stage, f"{wall:.0f}", f"{cpu:.0f}", str(cores), f"{cpu / cores:.0f}"]
            for stage, (wall, cpu, cores) in times.stages.items()]
    wall, cpu = times.totals()
    rows.append(["total", f"{wall:.0f}", f"{cpu:.0f}", "", f"{times.idle_estimate_s():.0f}"])
    return _table(["stage", "wall s", "CPU s", "cores used", "idle estimate s"], rows)


def plot_losses(run_dir: Path, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    base = read_metrics(run_dir / "runs" / "base" / "metrics.jsonl")
    offset = max((r["step"] for r in base if "loss" in r), default=0)
    ax1.plot([r["step"] for r in base if "loss" in r], [r["loss"] for r in base if "loss" in r],
             label=LABELS["base"], color="black")
    for v in VARIANTS:
        recs = read_metrics(run_dir / "runs" / v.name / "metrics.jsonl")
        ax1.plot([offset + r["step"] for r in recs if "loss" in r],
                 [r["loss"] for r in recs if "loss" in r], label=v.label)
        val = [r for r in recs if "valid_general_loss" in r]
        line, = ax2.plot([r["step"] for r in val], [r["valid_general_loss"] for r in val],
                         label=f"{v.name} general")
        ax2.plot([r["step"] for r in val], [r["valid_domain_loss"] for r in val], ls="--",
                 color=line.get_color(), label=f"{v.name} domain")
    ax1.set(xlabel="step (continued pretraining after the base's last step)",
            ylabel="training loss (nats/token)", title="training loss")
    ax2.set(xlabel="continued-pretraining step", ylabel="held-out loss (nats/token)",
            title="held-out loss during continued pretraining")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_tradeoff(scores: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in ["base", *(v.name for v in VARIANTS)]:
        s = scores[name]
        ax1.scatter(ppl(s, "domain"), ppl(s, "general"))
        ax1.annotate(name, (ppl(s, "domain"), ppl(s, "general")), fontsize=8)
        ax2.scatter(s["shopbench"]["score"], ppl(s, "general"))
        ax2.annotate(name, (s["shopbench"]["score"], ppl(s, "general")), fontsize=8)
    ax1.set(xlabel="domain held-out perplexity (lower is better)",
            ylabel="general held-out perplexity (lower is better)", title="general vs domain")
    ax2.set(xlabel="ShopBench-format accuracy (log-likelihood)",
            ylabel="general held-out perplexity", title="general vs domain tasks")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_merge(scores: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sweep_points(scores, MERGE_ALPHAS)
    alphas, sweep = [a for a, _ in points], [s for _, s in points]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.plot([ppl(s, "domain") for s in sweep], [ppl(s, "general") for s in sweep], marker="o")
    for a, s in zip(alphas, sweep):
        ax1.annotate(f"alpha {a:g}", (ppl(s, "domain"), ppl(s, "general")), fontsize=8)
    ax1.set(xlabel="domain perplexity", ylabel="general perplexity",
            title="merge sweep: (1 - alpha) base + alpha recipe")
    ax2.plot(alphas, [s["shopbench"]["score"] for s in sweep], marker="o", color="tab:green")
    ax2.set(xlabel="alpha", ylabel="ShopBench-format accuracy", title="domain tasks vs alpha")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def closing_note(findings: list[Finding]) -> str:
    failed = [f for f in findings if not f.holds]
    if not failed:
        return "Every finding holds at this scale."
    return "\n".join(f"- **{f.key}** does not hold here: {WHY_NOT[f.key]}" for f in failed)


def render(scores: dict, findings: list[Finding], times, counts: dict,
           eval_commands: list[str] = ()) -> str:
    names = ["base", *(v.name for v in VARIANTS)]
    merges = [n for n in scores if n.startswith("merge_")]
    wall, cpu = times.totals()
    parts = [
        "# e-Llama's findings at toy scale", "",
        "A tiny Llama (elama's `model=tiny`) pretrained from scratch on general text, then "
        "adapted to synthetic e-commerce text with e-Llama's recipe and its ablations, all with "
        "elama's own commands. Perplexities are on held-out text; ShopBench-format accuracy "
        "scores multiple choice by log-likelihood.", "",
        "## Findings (computed from the numbers below)", "",
        *(f"- **{f.key}** ({f.claim}): **{'holds' if f.holds else 'does not hold'}**. "
          f"{f.statement}" for f in findings), "",
        "## Base and variants", "", model_table(scores, names), "",
        "![general vs domain](plots/tradeoff.png)", "",
        "### Perplexity per language", "", language_table(scores, names + merges), "",
        "### ShopBench-format tasks", "", task_table(scores, names + merges), "",
        "## Merge sweep", "", merge_table(scores), "", "![merge curve](plots/merge.png)", "",
        "## Loss curves", "", "![loss curves](plots/losses.png)", "",
        "## Data", "", _table(["file", "records"], [[k, str(v)] for k, v in counts.items()]), "",
        "Every model was scored as these tools/evaluate.py commands score the base (same code, "
        "one process for all models):", "", "```", *eval_commands, "```", "",
        "## Time", "", times_table(times), "",
        f"On an idle 2-core machine this takes about {times.idle_estimate_s():.0f} s (each "
        f"stage's CPU seconds over the cores it keeps busy); this run took {wall:.0f} s of wall "
        "time on this machine, shared or not.", "",
        "## Closing note", "", closing_note(findings), "",
    ]
    return "\n".join(parts)


def write_report(run_dir: Path, scores: dict, times, counts: dict, weight_diffs: dict,
                 eval_commands: list[str] = ()) -> dict:
    run_dir = Path(run_dir)
    findings = compute_findings(scores, LR_VARIANTS, MERGE_ALPHAS, base_losses(run_dir),
                                weight_diffs)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_losses(run_dir, plots / "losses.png")
    plot_tradeoff(scores, plots / "tradeoff.png")
    plot_merge(scores, plots / "merge.png")
    report = run_dir / "REPORT.md"
    report.write_text(render(scores, findings, times, counts, eval_commands))
    results = {"scores": scores, "base_losses": base_losses(run_dir),
               "weight_diffs": weight_diffs, "findings": [f.__dict__ for f in findings],
               "times": times.stages, "counts": counts}
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return {"report": str(report), "findings": findings, "results": results}
