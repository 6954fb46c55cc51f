#!/bin/bash
# One device call: GPU tests of flash_attn_triton + the attention benchmark.
# Usage (device): bash benchmarks/attention_gpu.sh [tests|bench|all]
# Logs and results go to $OUT (or benchmarks/results when OUT is unset).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-benchmarks/results}
WHAT=${1:-all}
TEST_LIMIT=${TEST_LIMIT:-150}
BENCH_LIMIT=${BENCH_LIMIT:-300}
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
  python3 -c "import torch, triton, inspect; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)
import torch.nn.attention.varlen as v; print('varlen_attn', inspect.signature(v.varlen_attn))"
} 2>&1 | tee "$OUT/env.txt"
if [ "$WHAT" = tests ] || [ "$WHAT" = all ]; then
  # broad matrix with one config per kernel (compile time), then the
  # autotuned configs on the main cases
  ( echo "== GPU tests, MOSAIC_FA_TUNE=0 (first config of each kernel)";
    MOSAIC_FA_TUNE=0 timeout $TEST_LIMIT python3 -m pytest -q -rA -k gpu -p no:cacheprovider tests/modeling/test_flash_attn_triton.py;
    echo "== GPU tests, full autotune";
    timeout 120 python3 -m pytest -q -rA -k "gpu_alibi or gpu_repeatable or gpu_no_alibi" -p no:cacheprovider tests/modeling/test_flash_attn_triton.py
  ) 2>&1 | tee "$OUT/attention_tests_h100.log"
fi
if [ "$WHAT" = bench ] || [ "$WHAT" = all ]; then
  timeout $BENCH_LIMIT python3 benchmarks/benchmark.py attention --out "$OUT" --tag h100 $BENCH_ARGS 2>&1 | tee "$OUT/attention_bench_h100.log"
fi
