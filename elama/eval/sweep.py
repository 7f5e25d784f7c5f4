"""The merge trade-off (e-Llama): for each alpha of a linear merge of base and adapted model
(elama.merge.sweep), a domain suite and a general suite; sweep.csv, sweep.md and sweep.png
(general against domain score, one labelled point per alpha). A suite is held-out perplexity
(mean over its datasets; lower is better) or, for the domain, ShopBench's overall score.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

COLUMNS = ("alpha", "domain", "general")


def add_sweep_args(p) -> None:
    p.add_argument("--base", required=True, help="base Hugging Face directory (alpha 0)")
    p.add_argument("--model", required=True, help="adapted Hugging Face directory (alpha 1)")
    p.add_argument("--alphas", required=True, help="comma-separated, e.g. 0,0.5,1")
    p.add_argument("--out", required=True, help="output directory (merged models, table, plot)")
    p.add_argument("--domain-data", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--general-data", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--domain-tasks", help="ShopBench JSONL: the domain score is its overall score")
    p.add_argument("--text-key", action="append", help="JSONL text field(s) (default: text)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--max-tokens", type=int, help="predicted tokens per dataset")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--delete-merged", action="store_true", help="delete each merge once scored")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--no-progress", action="store_true")


def parse_alphas(text: str) -> list[float]:
    from elama.eval.shopbench import EvalInputError

    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise EvalInputError(f"--alphas {text!r}: expected comma-separated numbers") from None
    if not alphas:
        raise EvalInputError("--alphas: give at least one alpha")
    return alphas


def _mean_ppl(report: dict) -> float:
    return math.fsum(r["perplexity"] for r in report["datasets"].values()) / len(report["datasets"])


def merge_sweep(base, model, alphas: Sequence[float], out, *, general_data: Sequence[str],
                domain_data: Sequence[str] = (), domain_tasks=None, text_keys=("text",),
                seq_len: int = 256, max_tokens: int | None = None, batch_size: int = 4,
                keep_merged: bool = True, force: bool = False, progress: bool = True) -> dict:
    """{"rows": [{alpha, domain, general, domain_metric, general_metric, ...}], "csv", "markdown",
    "plot"}: every merged model scored on both suites."""
    from elama.eval.runs import evaluate_perplexity, evaluate_shopbench
    from elama.eval.shopbench import EvalInputError
    from elama.merge import sweep

    if not domain_data and not domain_tasks:
        raise EvalInputError("give a domain suite: --domain-data NAME=PATH or --domain-tasks")
    from elama.eval.perplexity import load_dataset
    from elama.eval.shopbench import load_rows

    for spec in [*general_data, *domain_data]:  # bad input fails before anything is merged
        load_dataset(spec, text_keys=tuple(text_keys))
    if domain_tasks:
        load_rows(domain_tasks)
    kw = dict(text_keys=text_keys, seq_len=seq_len, max_tokens=max_tokens, batch_size=batch_size,
              progress=progress)

    def score(alpha: float, path: Path) -> dict:
        general = _mean_ppl(evaluate_perplexity(path, general_data, **kw))
        if domain_tasks:
            domain = evaluate_shopbench(domain_tasks, model=path, batch_size=batch_size,
                                        progress=progress)["overall"]
        else:
            domain = _mean_ppl(evaluate_perplexity(path, domain_data, **kw))
        return {"domain": domain, "general": general}

    rows = sweep(base, [model], out, alphas, on_merged=score, keep_merged=keep_merged,
                 force=force, progress=progress)
    metrics = ("shopbench overall" if domain_tasks else "perplexity", "perplexity")
    for r in rows:
        r["domain_metric"], r["general_metric"] = metrics
    out = Path(out)
    return {"rows": rows, "csv": str(write_csv(out / "sweep.csv", rows)),
            "markdown": markdown_sweep(rows), "plot": str(plot_sweep(out / "sweep.png", rows))}


def write_csv(path: Path, rows: list[dict]) -> Path:
    cols = [*COLUMNS, *(k for k in rows[0] if k not in COLUMNS)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def markdown_sweep(rows: list[dict]) -> str:
    from elama.eval.shopbench import markdown_table

    columns = ["alpha", f"domain ({rows[0]['domain_metric']})", f"general ({rows[0]['general_metric']})"]
    return markdown_table(columns, [[f"{r['alpha']:g}", r["domain"], r["general"]] for r in rows], 0)


def plot_sweep(path: Path, rows: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    xs, ys = [r["domain"] for r in rows], [r["general"] for r in rows]
    ax.plot(xs, ys, "o-", color="tab:blue")
    for r in rows:
        ax.annotate(f"α={r['alpha']:g}", (r["domain"], r["general"]), textcoords="offset points",
                    xytext=(5, 5))
    ax.set_xlabel(f"domain: {rows[0]['domain_metric']}")
    ax.set_ylabel(f"general: {rows[0]['general_metric']}")
    ax.set_title("merge trade-off (alpha: weight of the adapted model)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_sweep_cli(a) -> None:
    result = merge_sweep(a.base, a.model, parse_alphas(a.alphas), a.out,
                         general_data=a.general_data, domain_data=a.domain_data,
                         domain_tasks=a.domain_tasks, text_keys=tuple(a.text_key or ["text"]),
                         seq_len=a.seq_len, max_tokens=a.max_tokens, batch_size=a.batch_size,
                         keep_merged=not a.delete_merged, force=a.force, progress=not a.no_progress)
    print(result["markdown"])
    print(f"\ntable: {result['csv']}\nplot: {result['plot']}")
