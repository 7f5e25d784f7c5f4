#!/usr/bin/env bash
# One command on one GPU (H200: ~8 minutes): install what is missing from tools/gpu_wheels
# (offline), then bf16 training of a ~1B Llama (local spec, distributed optimizer), save, kill -9,
# resume (bitwise equal), logits against transformers on the GPU, tokens/s and MFU figures.
# Usage: tools/gpu_check.sh [WORKDIR]     (needs python3.12 with torch + transformers, a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORKDIR=${1:-$(mktemp -d -t elama-gpu-check-XXXXXX)}

"$PYTHON" -c 'import torch, transformers; assert torch.cuda.is_available(), "no CUDA GPU"' \
    || { echo "gpu_check: needs torch with a CUDA GPU and transformers" >&2; exit 2; }
if ! "$PYTHON" -c 'import megatron.core' 2>/dev/null; then
    "$PYTHON" -m pip install --no-index --find-links tools/gpu_wheels \
        -r tools/gpu_wheels/requirements.txt
fi
"$PYTHON" -m pip install --no-index --no-deps --no-build-isolation -e . >/dev/null
exec "$PYTHON" tools/gpu_check.py --workdir "$WORKDIR"
