#!/usr/bin/env bash
# The speed benchmarks on a CUDA GPU, in one short call (about 4 minutes on one H100):
# matmul peaks (fp32, bf16, fp16), forward-pass levers (bf16/fp16 autocast,
# channels-last, BatchNorm folding, torch.compile, CUDA graphs), tile choices,
# predict against MONAI sliding_window_inference, and the training step against a
# plain MONAI loop. Writes the "speed-gpu" section of docs/benchmarks.md.
#
#   bash benchmarks/gpu.sh [DATA_DIR]        # DATA_DIR defaults to ../shared/data
#
# Weights cached in benchmarks/_work/ are reused (copy that folder along to compare
# with the CPU numbers on the same weights); without them a 60-step training runs first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DATA=${1:-../shared/data}
# More CPU threads than the 2 of the CPU benchmark machine: here they only compute the
# untiled reference and feed the GPU.
export BENCH_THREADS=${BENCH_THREADS:-$(nproc)}
"$PYTHON" - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device: run benchmarks/run_all.py for the CPU"
print(torch.cuda.get_device_name(), "torch", torch.__version__)
EOF
"$PYTHON" benchmarks/run_all.py --data "$DATA" --device cuda --out docs/benchmarks.md
