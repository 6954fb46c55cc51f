#!/bin/bash
# One device call (issue 11, "what must be shown" 3): the paper's recipe end to end on the new data path.
#   1. a local C4-layout corpus (c4-train.NNNNN-of-MMMMM.json.gz) cut from .carry/pretrain/train.txt.xz (Wikipedia,
#      135 MB of text, split into ~2,000-character documents like C4's pages), 10 MB per shard;
#   2. converted with the CLI (scripts/prepare_data.py, one process per core, truncate, seq 128);
#   3. scripts/pretrain.py mosaic-bert-base-uncased on the converted folder (global batch 4096, microbatch 128,
#      compiled fast path, 4 loader workers) for STEPS steps (~2-3 min on one H100);
#   4. the bare compiled loop on the same shapes (benchmarks/pretrain_bare_loop.py) to price the data path.
# Needs in .carry/pretrain/: train.txt.xz and bert-base-uncased/ (as benchmarks/pretrain_gpu.sh).
# Usage (device): bash benchmarks/data_gpu_e2e.sh      (STEPS, MB, NPROC, SIZE_MB, TRAIN_LIMIT override;
#   CONVERT_ONLY=1 stops after the conversion: a CPU check of the first half)
set -o pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
OUT=${OUT:-benchmarks/results/data_gpu_e2e_out}
C=.carry/pretrain
STEPS=${STEPS:-120}; MB=${MB:-128}; GB=4096; NPROC=${NPROC:-$(nproc)}; SIZE_MB=${SIZE_MB:-130}
W=/tmp/data_e2e
LOG="$OUT/data_gpu_e2e.log"
mkdir -p "$OUT" $W
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, transformers, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__)"
  echo "cores $(nproc), conversion processes $NPROC"
  t=$(date +%s.%N)
  python3 -c "
import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path
from data_bench import make_inputs
folder, docs, nbytes = make_inputs('$C/train.txt.xz', $SIZE_MB, Path('$W'), shard_mb=10)
print('c4-layout corpus:', folder, docs, 'documents', nbytes // 10**6, 'MB of text')
"
  echo "corpus made in $(python3 -c "print(round($(date +%s.%N) - $t, 1))") s"
  t=$(date +%s.%N)
  python3 scripts/prepare_data.py "$W/c4like-${SIZE_MB}MB-10/*.json.gz" --out $W/c4-128 --tokenizer $C/bert-base-uncased \
      --seq-len 128 --mode truncate --num-proc $NPROC 2>&1 | tail -3
  echo "conversion wall $(python3 -c "print(round($(date +%s.%N) - $t, 1))") s"
  python3 -c "import json; m = json.load(open('$W/c4-128/manifest.json')); print('converted:', m['train']['rows'], 'train rows,', m['train']['tokens'], 'tokens,', len(m['train']['shards']), 'shards,', m['valid']['rows'], 'held-out rows')"
} 2>&1 | tee "$LOG"
[ -n "$CONVERT_ONLY" ] && exit 0
# The paper's recipe on the converted folder: the folder's own tokenizer (bert-base-uncased), nothing tokenized here.
t=$(date +%s.%N)
timeout ${TRAIN_LIMIT:-420} python3 scripts/pretrain.py mosaic-bert-base-uncased name=mosaic-bert-base-c4like \
  data.hub_name=null data.train_files=$W/c4-128 tokenizer.name_or_path=null data.num_workers=4 \
  train.global_batch_size=$GB train.microbatch_size=$MB train.max_duration=${STEPS}ba train.eval_interval=$STEPS \
  train.eval_samples=4096 train.log_interval=10 train.checkpoint_interval=$STEPS train.keep_checkpoints=1 \
  train.output_dir=$W/run "train.fill_mask_example=paris is the [MASK] of france." 2>&1 | tr '\r' '\n' | grep -v '^pretrain: ' | tee -a "$LOG"
echo "pretrain wall (imports + first step + $STEPS steps + eval + export) $(python3 -c "print(round($(date +%s.%N) - $t, 1))") s" | tee -a "$LOG"
cp $W/run/metrics.jsonl "$OUT/data_gpu_e2e_metrics.jsonl" 2>/dev/null
python3 -c "
import numpy as np
from mosaic_bert.train.data import TokenizedSplit
np.save('$W/train_lengths.npy', TokenizedSplit('$W/c4-128', 'train').lengths_array().astype(np.int32))"
timeout ${BARE_LIMIT:-200} python3 benchmarks/pretrain_bare_loop.py --run $W/run --lengths $W/train_lengths.npy \
  --steps $STEPS --microbatch $MB --accum $((GB / MB)) --out "$OUT/data_gpu_e2e_bare.json" 2>&1 | tee -a "$LOG"
