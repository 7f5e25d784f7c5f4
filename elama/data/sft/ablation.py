"""The paper's two instruction-tuning ablations at toy scale (tools/ablate_sft.py): (a) capability
areas added one at a time, (b) subtasks added within every area. The synthetic multi-capability
set is generated and tokenized at run time; every run starts from the same saved initialisation
with the same step budget, selects its tasks through data.sft.mixture, and is scored on held-out
ShopBench rows of every area by the evaluation harness (elama.eval: greedy generation on the
megatron checkpoint, the ShopBench parsers and metrics). One table row per run, and a plot.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from elama.data.sft.synthetic import AREAS, all_tasks, shopbench_rows, train_records

logger = logging.getLogger(__name__)

# Short answers: caps far below the harness defaults keep greedy decoding cheap on CPU.
MAX_NEW_TOKENS = {"multiple-choice": 2, "retrieval": 8, "ranking": 10,
                  "named_entity_recognition": 8, "generation": 10}


@dataclass(frozen=True)
class AblationRun:
    name: str
    axis: str
    """'base' (the untrained init), 'areas' (a) or 'subtasks' (b)."""
    tasks: tuple[str, ...]


def plan_runs(areas: list[str] | None = None) -> list[AblationRun]:
    areas = areas or list(AREAS)
    runs = [AblationRun("untrained", "base", ())]
    for k in range(1, len(areas) + 1):
        tasks = tuple(t for a in areas[:k] for t in AREAS[a])
        runs.append(AblationRun(f"areas={k} (+{areas[k - 1]})", "areas", tasks))
    most = max(len(AREAS[a]) for a in areas)
    for k in range(1, most):  # k = most is the last (a) run: every task of every area
        runs.append(AblationRun(f"subtasks={k}/area", "subtasks",
                                tuple(t for a in areas for t in AREAS[a][:k])))
    return runs


def prepare_data(root: Path, *, per_task: int, heldout_per_task: int, seed: int) -> dict:
    """Tokenized training set (every task; runs select by mixture) and held-out ShopBench rows."""
    from elama.data.sft.preprocess import tokenize_chat

    root.mkdir(parents=True, exist_ok=True)
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                             for r in train_records(all_tasks(), per_task, seed)), encoding="utf-8")
    manifest = tokenize_chat([str(train)], str(root / "train"))
    heldout = root / "heldout.jsonl"
    heldout.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in
                               shopbench_rows(all_tasks(), heldout_per_task, seed)), encoding="utf-8")
    return {"prefix": str(root / "train"), "heldout": str(heldout), "manifest": manifest}


def _fresh_port() -> None:
    """A world of one for the next process group (each run makes and destroys its own)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")


def save_init(overrides: list[str], out: Path) -> Path:
    """The shared starting point: the seeded initialisation as a weights-only checkpoint."""
    import dataclasses

    from elama import checkpoint
    from elama.config import load_config
    from elama.parallel import parallelize_llama, setup
    from elama.parallel.dims import ParallelDims

    cfg = load_config(overrides)
    _fresh_port()
    dims = ParallelDims.from_config(cfg.parallel, 1)
    setup.init_distributed(dims, device="cpu", seed=cfg.seed)
    chunks, _ = parallelize_llama(cfg, dims)
    iter_dir = out / checkpoint.iter_name(0)
    checkpoint.save_model(chunks, iter_dir / "model")
    checkpoint.write_meta(iter_dir, {"kind": "weights", "step": 0,
                                     "model": dataclasses.asdict(cfg.model)})
    checkpoint.write_tracker(out, 0)
    setup.destroy_distributed()
    return out


def train_run(overrides: list[str]) -> float:
    """One SFT run in this process; its last logged answer-token loss."""
    from elama.config import load_config, validate
    from elama.trainer import Trainer

    cfg = load_config(overrides)
    validate(cfg, 1)
    _fresh_port()
    trainer = Trainer(cfg, 1)
    try:
        trainer.train()
    finally:
        trainer.close()
    lines = (Path(cfg.checkpoint.run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if '"loss"' in x][-1]["loss"]


def score_checkpoint(ckpt: Path, heldout: str) -> dict:
    """The harness's ShopBench report of a checkpoint on the held-out rows."""
    from elama.eval.backends import MegatronBackend
    from elama.eval.generate import generate_outputs
    from elama.eval.shopbench import load_rows, score_rows

    rows = load_rows(heldout)
    _fresh_port()
    backend = MegatronBackend(str(ckpt), ["model.precision=fp32"], batch_size=16)
    try:
        outputs = generate_outputs(backend, rows, chat=True, batch_size=16,
                                   max_new_tokens=MAX_NEW_TOKENS, progress=False)
    finally:
        backend.close()
    return score_rows(rows, outputs, progress=False)


def area_scores(report: dict) -> dict[str, float]:
    """Mean task score per capability area (tasks named as in the synthetic set)."""
    out = {}
    for area, tasks in AREAS.items():
        scores = [report["tasks"][t]["score"] for t in tasks if t in report["tasks"]]
        if scores:
            out[area] = sum(scores) / len(scores)
    return out


def run_ablation(out: Path, base_overrides: list[str], *, steps: int, per_task: int,
                 heldout_per_task: int, seed: int, areas: list[str] | None = None,
                 only: list[str] | None = None) -> list[dict]:
    """Every planned run (or those named in `only`): train from the shared init, score; rows."""
    data = prepare_data(out / "data", per_task=per_task, heldout_per_task=heldout_per_task,
                        seed=seed)
    init = save_init(base_overrides, out / "init")
    rows = []
    for index, run in enumerate(plan_runs(areas)):
        if only and run.name not in only and run.axis not in only:
            continue
        ckpt, loss = init, None
        if run.tasks:
            run_dir = out / "runs" / f"run{index:02d}_{run.axis}"
            mixture = ",".join(f"{{area:{a},task:{t},value:1.0}}" for a, tasks in AREAS.items()
                               for t in tasks if t in run.tasks)
            loss = train_run(base_overrides + [
                "data=sft_toy", "train.mode=sft", f"data.sft.prefix={data['prefix']}",
                "data.sft.valid_prefix=null", f"data.sft.mixture=[{mixture}]",
                f"train.train_steps={steps}", f"checkpoint.run_dir={run_dir}",
                f"checkpoint.init_from={init}", "train.eval_interval=0",
                "checkpoint.async_save=false",  # one process, scored right after the run
                "logging.tensorboard=false"])
            ckpt = run_dir
        report = score_checkpoint(ckpt, data["heldout"])
        rows.append({"run": run.name, "axis": run.axis, "tasks": len(run.tasks),
                     "areas": len({a for a, ts in AREAS.items() if set(ts) & set(run.tasks)}),
                     "final_answer_loss": loss, "overall": report["overall"],
                     **{f"score_{a}": v for a, v in area_scores(report).items()}})
        logger.info("ablation run %s: overall %.4f", run.name, report["overall"])
    return rows


def write_table(rows: list[dict], out: Path) -> tuple[Path, Path, Path]:
    """ablation.json, ablation.md (one row per run) and ablation.png (score by run, per axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(rows[0])
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        md.append("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else
                                    ("-" if r[c] is None else str(r[c])) for c in cols) + " |")
    paths = out / "ablation.json", out / "ablation.md", out / "ablation.png"
    paths[0].write_text(json.dumps(rows, indent=2) + "\n")
    paths[1].write_text("\n".join(md) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    base = next((r["overall"] for r in rows if r["axis"] == "base"), None)
    full = max((r for r in rows if r["axis"] == "areas"), key=lambda r: r["areas"], default=None)
    for ax, axis, label in ((axes[0], "areas", "capability areas"),
                            (axes[1], "subtasks", "tasks per area")):
        picked = [r for r in rows if r["axis"] == axis]
        if axis == "subtasks" and full is not None:  # every task of every area closes axis (b)
            picked.append(full)
        xs = [r["areas"] if axis == "areas" else r["tasks"] // max(r["areas"], 1) for r in picked]
        ax.plot(xs, [r["overall"] for r in picked], marker="o", label="held-out overall")
        if base is not None:
            ax.axhline(base, color="gray", linestyle="--", label="untrained")
        ax.set_xlabel(label)
        ax.legend()
    axes[0].set_ylabel("ShopBench-style score")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths
