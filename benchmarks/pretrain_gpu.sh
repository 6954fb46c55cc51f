#!/bin/bash
# One device call: MosaicBERT-base pretraining on a Wikipedia slice with the paper's recipe (shortened), then the
# same model in a bare loop (random data on the GPU) to price the data path.  Needs in .carry/pretrain/:
#   train.txt.xz (../shared/data/wikipedia) and bert-base-uncased/ (../shared/tokenizers)   -- git-ignored, carried.
# Usage (device): bash benchmarks/pretrain_gpu.sh      (STEPS, MB, GB, SLICE_MB override)
set -o pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
OUT=${OUT:-benchmarks/results/pretrain_gpu_out}
C=.carry/pretrain
TAG=${TAG:-h100}; STEPS=${STEPS:-300}; MB=${MB:-256}; GB=${GB:-1024}; SLICE_MB=${SLICE_MB:-60}
W=/tmp/pt
mkdir -p "$OUT" $W
{
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
  python3 -c "import torch, transformers, accelerate, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'triton', triton.__version__)"
  python3 -c "import datasets; print('datasets', datasets.__version__)" 2>&1 | tail -1
  t=$(date +%s); xz -dc $C/train.txt.xz | head -c ${SLICE_MB}000000 > $W/wiki.txt; echo "decompressed ${SLICE_MB} MB slice in $(( $(date +%s) - t )) s"
} 2>&1 | tee "$OUT/pretrain_${TAG}.log"
timeout ${TRAIN_LIMIT:-420} python3 scripts/pretrain.py mosaic-bert-base-uncased name=mosaic-bert-base-wiki-${TAG} \
  tokenizer.name_or_path=$C/bert-base-uncased data.hub_name=null data.train_files=$W/wiki.txt data.mode=chunk \
  data.max_train_docs=null data.valid_fraction=0.01 data.max_valid_docs=null data.cache_dir=$W/cache data.num_workers=4 \
  train.global_batch_size=$GB train.microbatch_size=$MB train.max_duration=${STEPS}ba train.eval_interval=100 \
  train.eval_samples=4096 train.log_interval=10 train.checkpoint_interval=$STEPS train.keep_checkpoints=1 \
  train.output_dir=$W/run "train.fill_mask_example=paris is the [MASK] of france." 2>&1 | tr '\r' '\n' | grep -v '^pretrain: ' | tee -a "$OUT/pretrain_${TAG}.log"
cp $W/run/loss_curve.png "$OUT/pretrain_${TAG}_loss_curve.png"; cp $W/run/metrics.jsonl "$OUT/pretrain_${TAG}_metrics.jsonl"
cp $W/run/README.md "$OUT/pretrain_${TAG}_model_card.md"
timeout ${BARE_LIMIT:-200} python3 benchmarks/pretrain_bare_loop.py --run $W/run --lengths $(ls -d $W/cache/tok-*)/train_lengths.npy \
  --steps $STEPS --microbatch $MB --accum $((GB / MB)) --out "$OUT/pretrain_${TAG}.json" 2>&1 | tee -a "$OUT/pretrain_${TAG}.log"
