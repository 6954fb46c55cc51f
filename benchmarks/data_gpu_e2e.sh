#!/bin/bash
# One device call (issue 11, "data at the paper's scale"), <= ~9 min on one H100 machine (16 cores, 128 GB):
#   convert-E2E   C4-layout corpus (c4-train.NNNNN-of-MMMMM.json.gz, gzip level 1, one writer process per shard) of
#                 E2E_MB MB cut from .carry/pretrain/train.txt.xz (Wikipedia split into ~2,000-character documents like
#                 C4's pages, repeats prefixed so none are equal), converted by scripts/prepare_data.py with NPROC
#                 processes (truncate, seq 128); time to the first step and RSS from the folder (benchmarks/data_bench.py)
#   pretrain-mbM  for each microbatch M in MBS (default 128, the recipe's; MBS=128,256 adds 256): scripts/pretrain.py
#                 mosaic-bert-base-uncased on that folder (global batch 4096, compiled fast path, 4 loader workers)
#                 for STEPS steps, logging every 5 steps (tokens/s, MFU, the share of time spent waiting for data)
#   bare-mbM      the bare compiled loop on the same shapes (benchmarks/pretrain_bare_loop.py): the recipe's logged
#                 tokens/s must be within 5 % of it
#   convert-N     the other SIZES (4 GB, 100 MB): inputs, conversion with NPROC processes, first step, peak RSS
#   convert-1p    the last size (100 MB) with 1 process (tokens/s per core against NPROC)
# Each part runs under `timeout` inside one budget (BUDGET s from the start): a part that would not fit is skipped,
# one past its limit is cut, and every finished part's results are already in $OUT. Parts print their wall seconds
# ("[part] NAME rc=.. S s"). The GPU parts are skipped without CUDA (or with CONVERT_ONLY=1): the CPU dry run.
# Needs .carry/pretrain/ (train.txt.xz, bert-base-uncased/); the data path reads json.gz itself (no `datasets`).
# Returns in $OUT: data_gpu_e2e.log, data_bench.json, data_gpu_e2e_bare_mbM.json, data_gpu_e2e_metrics_mbM.jsonl;
#   python benchmarks/data_bench.py --report DIR      turns them into benchmarks/results/data_gpu_e2e.md (+ .json).
# Usage (device): bash benchmarks/data_gpu_e2e.sh
#   CPU dry run:  SIZES=3,8 SHARDS=4,4 E2E_MB=6 E2E_SHARDS=4 NPROC=2 BUDGET=400 GPU_PARTS=1 STEPS=2 BARE_STEPS=2 MBS=4 \
#     GB=8 PRETRAIN_EXTRA="train.log_interval=1 train.eval_samples=16" BARE_EXTRA="--device cpu --no-compile" bash ...
set -o pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
OUT=${OUT:-benchmarks/results/data_gpu_e2e_out}
C=.carry/pretrain
STEPS=${STEPS:-40}; BARE_STEPS=${BARE_STEPS:-50}; MBS=${MBS:-128}; GB=${GB:-4096}; NPROC=${NPROC:-$(nproc)}
# SIZES (MB of text) with SHARDS each: a multiple of 16 input shards (one conversion job each) keeps 16 processes busy
SIZES=${SIZES:-4000,100}; SHARDS=${SHARDS:-160,32}; E2E_MB=${E2E_MB:-1000}; E2E_SHARDS=${E2E_SHARDS:-48}
BUDGET=${BUDGET:-530}; LOADER_S=${LOADER_S:-3}
W=${W:-/tmp/data_e2e}
LOG="$OUT/data_gpu_e2e.log"
mkdir -p "$OUT" $W
exec > >(tee -a "$LOG") 2>&1
TEE=$!
T0=$(date +%s)
export OUT C W NPROC LOADER_S STEPS BARE_STEPS GB

LB=$(command -v stdbuf >/dev/null && echo "stdbuf -oL")   # line-buffered filters: a part cut by `timeout` keeps its log
export LB
since() { python3 -c "import time; print(round(time.time() - $1, 1))"; }

# part NAME NEED LIMIT FUNCTION: run FUNCTION under `timeout` (LIMIT s, less if the budget has less); skipped when
# fewer than NEED s are left.
part() {
  local name=$1 need=$2 limit=$3 fn=$4 left=$(( BUDGET - ($(date +%s) - T0) ))
  if (( left < need )); then echo "[part] $name skipped ($left s left of $BUDGET, needs $need)"; return 1; fi
  (( limit > left )) && limit=$left
  local t=$(date +%s.%N)
  echo "== $name (limit $limit s, $(( $(date +%s) - T0 )) s into the call)"
  timeout -k 10 $limit bash -c "$fn"
  local rc=$?
  echo "[part] $name rc=$rc $(since $t) s (limit $limit)"
  return $rc
}

bench() {  # SIZES SHARDS PROCS [more data_bench.py flags]: one data_bench.py call appending to $OUT/data_bench.json
  local sizes=$1 shards=$2 procs=$3; shift 3
  python3 benchmarks/data_bench.py --wiki $C/train.txt.xz --tokenizer $C/bert-base-uncased --work $W \
    --sizes $sizes --shards $shards --procs $procs --make-procs $NPROC --loader-seconds $LOADER_S \
    --loader-workers 4 --out $OUT/data_bench.json --append "$@" 2>&1 | grep --line-buffered -v '^\[bench\] {'
}

pretrain() {  # MB: the paper's recipe on the converted folder (the folder's own tokenizer, bert-base-uncased)
  python3 scripts/pretrain.py mosaic-bert-base-uncased name=mosaic-bert-base-c4like \
    data.hub_name=null data.train_files=$W/out-${E2E_MB}MB-truncate-p$NPROC tokenizer.name_or_path=null \
    data.num_workers=4 train.global_batch_size=$GB train.microbatch_size=$1 train.max_duration=${STEPS}ba \
    train.eval_interval=$STEPS train.eval_samples=4096 train.log_interval=5 train.checkpoint_interval=$STEPS \
    train.keep_checkpoints=1 train.output_dir=$W/run-mb$1 "train.fill_mask_example=paris is the [MASK] of france." \
    $PRETRAIN_EXTRA 2>&1 | $LB tr '\r' '\n' | grep --line-buffered -v -E '^pretrain: |it/s\]$|^$'
}

lengths() {  # the converted folder's row lengths (the bare loop draws its rows from them)
  [ -f $W/train_lengths.npy ] || python3 -c "
import numpy as np
from mosaic_bert.train.data import TokenizedSplit
s = TokenizedSplit('$W/out-${E2E_MB}MB-truncate-p$NPROC', 'train')
np.save('$W/train_lengths.npy', np.concatenate([s.shard(k)[1] for k in range(len(s.shards))]).astype(np.int32))"
}

bare() {  # MB: the same model work on random ids already on the GPU, row lengths drawn from the converted folder
  lengths && python3 benchmarks/pretrain_bare_loop.py --run $W/run-mb$1 --lengths $W/train_lengths.npy \
    --steps $BARE_STEPS --microbatch $1 --accum $((GB / $1)) --max-seconds ${BARE_MAX_S:-40} \
    --out "$OUT/data_gpu_e2e_bare_mb$1.json" $BARE_EXTRA
}
export -f since bench pretrain lengths bare
export E2E_MB PRETRAIN_EXTRA BARE_EXTRA

echo "commit $(git rev-parse --short HEAD 2>/dev/null)  $(date -u +%FT%TZ)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers, psutil; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
echo "cores $(nproc), conversion processes $NPROC, $(free -g | awk '/Mem:/ {print $2}') GB RAM, $(df -h /tmp | awk 'NR==2 {print $4}') free in /tmp"
CUDA=$(python3 -c "import torch; print(int(torch.cuda.is_available()))")
[ -n "$CONVERT_ONLY" ] && CUDA=0
[ -n "$GPU_PARTS" ] && CUDA=1     # the CPU dry run of the GPU parts' commands (tiny STEPS, GB, MBS; *_EXTRA)

# 1. the pretraining folder first (the GPU parts need it), then the GPU parts while the budget is fresh
part convert-${E2E_MB}MB 60 150 "bench $E2E_MB $E2E_SHARDS $NPROC"
if [ "$CUDA" = 1 ] && [ -f $W/out-${E2E_MB}MB-truncate-p$NPROC/manifest.json ]; then
  IFS=, read -ra mbs <<< "$MBS"
  for mb in "${mbs[@]}"; do   # per microbatch: the recipe, then the bare loop on the same shapes
    part pretrain-mb$mb 120 ${TRAIN_LIMIT:-170} "pretrain $mb"
    cp $W/run-mb$mb/metrics.jsonl "$OUT/data_gpu_e2e_metrics_mb$mb.jsonl"   # (also the windows of a run cut by its limit)
    [ -f $W/run-mb$mb/metrics.jsonl ] && part bare-mb$mb 70 ${BARE_LIMIT:-150} "bare $mb"
  done
else
  echo "[part] pretrain skipped (CUDA $CUDA or no converted folder)"; echo "[part] bare skipped (CUDA $CUDA)"
fi
# 2. the other sizes with NPROC processes, one part each, the missing 4 GB row first (each row survives a cut other)
IFS=, read -ra sizes <<< "$SIZES"; IFS=, read -ra shards <<< "$SHARDS"
for i in "${!sizes[@]}"; do
  part convert-${sizes[$i]}MB 30 ${CONVERT_LIMIT:-200} "bench ${sizes[$i]} ${shards[$i]} $NPROC"
done
# 3. the last (small) size with one process: the per-core rate without the pool (inputs reused, conversion only)
l=$(( ${#sizes[@]} - 1 ))
part convert-${sizes[$l]}MB-1proc 40 ${ONE_LIMIT:-120} "bench ${sizes[$l]} ${shards[$l]} 1 --no-first-step"
echo "[part] total rc=0 $(( $(date +%s) - T0 )) s (budget $BUDGET)"
du -sh $W/inputs/* $W/out-* 2>/dev/null
ls -la "$OUT"
exec >&- 2>&-; wait $TEE     # the log complete before the call returns
