#!/usr/bin/env bash
# Every GPU test on the code sent to the device, in one call (issue 15: GPU evidence on today's code).
#   MOSAIC_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu_tests.sh   (device; logs under $OUT)
# The sent tree has no .git of ours: the commit id comes from MOSAIC_COMMIT, set by whoever sends the tree, and is
# written at the top of every log. The working tree sent must be clean (git status) for that id to mean anything.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1
OUT=${OUT:-outputs/gpu_tests}; mkdir -p "$OUT"
env_header() { echo "commit ${MOSAIC_COMMIT:-unknown}  $(date -u +%FT%TZ)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
         python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"; }
env_header > "$OUT/gpu_tests.log" 2>&1
# the model's tests that exercise CUDA (the rest of each file runs too: CPU paths are checked against the GPU ones),
# one pytest process per file side by side (correctness only, nothing timed; the machine has 16 cores), then one log
FILES="test_model_gpu test_flash_attn_triton test_geglu_op test_hash_dropout test_attention_outputs test_compile_export"
for f in $FILES; do
  timeout ${TEST_LIMIT:-330} python3 -m pytest -q -rfEs -p no:cacheprovider --durations=5 tests/modeling/$f.py \
    > "$OUT/pytest_$f.log" 2>&1 &
done
wait
for f in $FILES; do echo "=== tests/modeling/$f.py"; tail -30 "$OUT/pytest_$f.log"; rm -f "$OUT/pytest_$f.log"; done \
  >> "$OUT/gpu_tests.log"
env_header > "$OUT/model_gpu_checks.log" 2>&1
timeout ${CHECK_LIMIT:-200} python3 benchmarks/model_gpu_checks.py 2>&1 | tail -30 >> "$OUT/model_gpu_checks.log"
cat "$OUT/gpu_tests.log" "$OUT/model_gpu_checks.log" | grep -E "passed|failed|PASS|FAIL|error" | tail -30
