#!/usr/bin/env bash
# How the tiny default recipe was chosen (issue 12: the main job's demo must visibly work): variants of
# tiny-default.yaml, each trained on the GPU in fp32 eager (the CPU main job's arithmetic, faster), each followed by
# the recipe's graded fill-mask demo on held-out sentences. The embedded corpus and its 4k vocabulary are carried
# from a Python 3.11 machine (the corpus depends on the Python version's docs): .carry/demo/{src.tar.gz,mosaic_bert}.
set -uo pipefail
R=$PWD; OUT=${OUT:-$R/outputs/demo}; mkdir -p "$OUT" /tmp/d/src /root/.cache
tar xzf .carry/demo/src.tar.gz -C /tmp/d/src && cp -r .carry/demo/mosaic_bert /root/.cache/
cd /tmp/d/src; export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
i=0
while read -r overrides; do
  i=$((i + 1)); echo "== v$i: $overrides" | tee -a "$OUT/demo_variants.log"
  python3 scripts/pretrain.py train.output_dir=/tmp/d/v$i train.compile=false train.mixed_precision=\'no\' \
    train.trackers=none $overrides < /dev/null 2>&1 | tr '\r' '\n' | grep -E "^\[pretrain\] held-out|^\[fill-mask\]|^ +->|rror" \
    | tee -a "$OUT/demo_variants.log"
done <<'VARIANTS'
train.lr=1e-3
train.lr=2e-3
train.lr=3e-3
train.lr=2e-3 train.max_duration=800ba
train.lr=2e-3 train.global_batch_size=64 train.microbatch_size=64
train.lr=2e-3 train.max_duration=1200ba
train.lr=3e-3 train.global_batch_size=64 train.microbatch_size=64 train.max_duration=600ba
train.lr=2e-3 model.num_hidden_layers=4
train.lr=2e-3 train.max_duration=800ba train.mlm_probability=0.15
VARIANTS
