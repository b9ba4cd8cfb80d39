#!/usr/bin/env bash
# GPU check of the 7B path (issue 11), one run, under 8 minutes on one GPU:
#   benchmarks/gpu_check.sh [gpu_check.py options, e.g. --blocks 2]
# 1. benchmarks/gpu_check.py: scoring time / bare 1 forward + R backward, peak memory and
#    tokens/s of a Dowser (rho 0.1) vs a Full-FT step, on a LLaVA-1.5-7B-shaped slice
#    -> benchmarks/results/gpu_check.json
# 2. benchmarks/memory_7b.py --compare cuda: every job of memory_7b.json (probe generation, official
#    scoring, Full-FT and Dowser steps with and without gradient checkpointing, the checkpoint save after
#    Dowser's step (its files written to a temporary folder), evaluation) on a 4-block
#    LLaVA-1.5-7B slice on CUDA: torch.cuda.max_memory_allocated vs the fake-tensor figure for the same
#    shapes (goal: within 10%) -> benchmarks/results/memory_7b_cuda.json
# 3. the `gpu`-marked tests (tests/test_gpu.py: bf16 fine-tune and scoring on CUDA)
#    -> benchmarks/results/gpu_tests.xml
# Exits non-zero when there is no CUDA device, or when either part fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: error: no CUDA device visible to torch (torch.cuda.is_available() is False);" \
         "run it on a GPU node, or 'python benchmarks/gpu_check.py --device cpu --tiny' for a CPU dry run" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 300 python benchmarks/gpu_check.py "$@"
memory=0
timeout 120 python benchmarks/memory_7b.py --compare cuda --blocks 4 --depth 4 --methods full dowser || memory=$?
timeout 60 python -m pytest -m gpu tests/test_gpu.py tests/test_precision.py tests/test_finetune_distributed.py -q -p no:cacheprovider \
    --junitxml=benchmarks/results/gpu_tests.xml
exit $memory
