#!/bin/bash
# One device call: MosaicBERT (eager and torch.compile) against HF BERT sdpa (eager and torch.compile) and
# ModernBERT-base sdpa, training and inference cases, one process, the same batches (benchmarks/benchmark.py compare).
#
# Usage (device, repository root):  bash benchmarks/compare_gpu.sh [benchmark.py options, e.g. --only 'train-256x128-*']
# Writes to $OUT (default benchmarks/results), flat, 4 files: compare_$TAG.{json,md,png} and compare_$TAG.log.
# Stays under the 10-minute command limit: no row starts after --budget-s (380 s; later rows are recorded as
# skipped) and the whole command is cut at $LIMIT seconds.
set -o pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
OUT=${OUT:-benchmarks/results}
TAG=${TAG:-h100}
LIMIT=${LIMIT:-570}
mkdir -p "$OUT"
LOG="$OUT/compare_$TAG.log"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,memory.total,temperature.gpu --format=csv
  python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$LOG"
timeout "$LIMIT" python3 benchmarks/benchmark.py compare --out "$OUT" --tag "$TAG" "$@" 2>&1 | tee -a "$LOG"
rc=$?
echo "exit $rc" | tee -a "$LOG"
exit $rc
