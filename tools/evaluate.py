"""Evaluate a Hugging Face directory or an elama checkpoint; thin CLI over elama.eval.

  python tools/evaluate.py shopbench TASKS.jsonl --model hf/ecom-8b --report out.json [--chat-template]
  python tools/evaluate.py shopbench TASKS.jsonl --predictions PRED.jsonl --report out.json
  python tools/evaluate.py shopbench TASKS.jsonl --model hf/llama3.1-8b --mc loglik
  python tools/evaluate.py perplexity --model runs/ecom-8b --data ecommerce=data/valid_ecommerce \\
      --data general=data/valid_general --report ppl.json
  torchrun --nproc-per-node 4 tools/evaluate.py perplexity --model runs/ecom-8b --data ... \\
      --override parallel.tp=2 --override parallel.pp=2
  python tools/evaluate.py lm-eval --model elama --model_args pretrained=hf/ecom-8b --tasks hellaswag
  python tools/evaluate.py merge-sweep --base hf/llama3.1-8b --model hf/ecom-8b --alphas 0,0.5,1 \\
      --domain-data ecommerce=data/valid_ecommerce --general-data general=data/valid_general --out sweep/
Exit codes: 0 done, 2 bad input (nothing written).
"""
from __future__ import annotations

if __name__ == "__main__":
    from elama.eval.cli import main
    from elama.lifetime import exit_process

    exit_process(main())
