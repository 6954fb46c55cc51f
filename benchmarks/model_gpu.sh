#!/bin/bash
# One device call: whole-model GPU tests (Triton vs PyTorch attention, CPU vs GPU) and the training-step benchmark.
# Usage (device): bash benchmarks/model_gpu.sh      Logs and results go to $OUT (or benchmarks/results).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv | tee "$OUT/model_env.txt"
timeout ${TEST_LIMIT:-200} python3 -m pytest -q -rA -s -p no:cacheprovider tests/test_model_gpu.py 2>&1 \
  | tee "$OUT/model_gpu_tests_h100.log"
timeout ${BENCH_LIMIT:-200} python3 benchmarks/benchmark.py model --out "$OUT" --tag h100 2>&1 | tee "$OUT/model_step_h100.log"
