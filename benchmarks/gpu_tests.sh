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
# the model's tests that exercise CUDA (the rest of each file runs too: CPU paths are checked against the GPU ones)
timeout ${TEST_LIMIT:-330} python3 -m pytest -q -rfEs -p no:cacheprovider tests/modeling/test_model_gpu.py \
  tests/modeling/test_flash_attn_triton.py tests/modeling/test_geglu_op.py tests/modeling/test_attention_outputs.py \
  tests/modeling/test_compile_export.py 2>&1 | tail -40 >> "$OUT/gpu_tests.log"
env_header > "$OUT/model_gpu_checks.log" 2>&1
timeout ${CHECK_LIMIT:-200} python3 benchmarks/model_gpu_checks.py 2>&1 | tail -30 >> "$OUT/model_gpu_checks.log"
cat "$OUT/gpu_tests.log" "$OUT/model_gpu_checks.log" | grep -E "passed|failed|PASS|FAIL|error" | tail -30
