"""The evaluation that ends `make demo`: the trained model's export against the untrained one
(same architecture, random initialisation) as a three-alpha merge sweep, whose alpha 0 and 1 rows
are domain and general perplexity before and after training; table and plot paths printed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

DEMO_ALPHAS = (0.0, 0.5, 1.0)
DEMO_MAX_TOKENS = 512  # per dataset: keeps the demo's evaluation to seconds on 2 cores


def write_untrained_like(hf_dir, out_dir, seed: int = 1234) -> Path:
    """A randomly initialised model with hf_dir's config and tokenizer: "before training"."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    src, out = Path(hf_dir), Path(out_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(src)), dtype=torch.float32)
    model.save_pretrained(str(out))
    # config.json too: the exported (Hub-layout) config, so the merge sees the same architecture
    for f in src.iterdir():
        if f.name.startswith(("config.json", "tokenizer", "special_tokens", "chat_template",
                              "generation_config")):
            shutil.copy2(f, out / f.name)
    return out


def evaluate_demo(hf_dir, domain: str, general: str, out_dir, *, progress: bool = False) -> dict:
    """Merge sweep between the untrained and trained model on the held-out sets (NAME=PATH each);
    prints before/after perplexity, the sweep table and its csv and plot paths."""
    from elama.eval.sweep import merge_sweep

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    before = write_untrained_like(hf_dir, out / "hf_untrained")
    result = merge_sweep(before, hf_dir, DEMO_ALPHAS, out / "sweep", general_data=[general],
                         domain_data=[domain], max_tokens=DEMO_MAX_TOKENS, keep_merged=False,
                         progress=progress)
    rows = {r["alpha"]: r for r in result["rows"]}
    print("\nheld-out perplexity (domain = e-commerce, general = docstrings):")
    for label, alpha in (("before training", 0.0), ("after training", 1.0)):
        print(f"  {label:16s} domain {rows[alpha]['domain']:10.2f}   general {rows[alpha]['general']:10.2f}")
    print(f"\nmerge sweep (alpha = weight of the trained model):\n{result['markdown']}")
    print(f"table: {result['csv']}\nplot: {result['plot']}")
    return result


def evaluate_demo_run(run_dir) -> dict:
    """evaluate_demo on tools/demo.py's layout: <run_dir>/hf and <run_dir>/data/valid_*."""
    run_dir = Path(run_dir)
    data = run_dir / "data"
    return evaluate_demo(run_dir / "hf", f"ecommerce={data / 'valid_ecommerce'}",
                         f"general={data / 'valid_general'}", run_dir / "eval")
