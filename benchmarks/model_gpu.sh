#!/bin/bash
# One device call: whole-model GPU tests (Triton vs PyTorch attention, CPU vs GPU), then the training cases of the
# side-by-side benchmark (benchmarks/compare_gpu.sh runs all of it).
# Usage (device): bash benchmarks/model_gpu.sh      Logs and results go to $OUT (or benchmarks/results).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv | tee "$OUT/model_env.txt"
timeout ${TEST_LIMIT:-200} python3 -m pytest -q -rA -s -p no:cacheprovider tests/modeling/test_model_gpu.py 2>&1 \
  | tee "$OUT/model_gpu_tests_h100.log"
timeout ${BENCH_LIMIT:-300} python3 benchmarks/benchmark.py compare --only 'train-*' --out "$OUT" --tag model_h100 \
  --budget-s $(( ${BENCH_LIMIT:-300} - 60 )) 2>&1 | tee "$OUT/model_step_h100.log"
