#!/usr/bin/env bash
# Quality per GPU-second (issue 13): MosaicBERT vs Hugging Face BERT (benchmarks' baseline recipe), both pretrained by
# scripts/pretrain.py on the same Wikipedia corpus (seq 128, chunk mode, global batch 256, bf16, torch.compile), both
# evaluated on the same held-out rows with the same 15 % masks (train.eval_mlm_probability, the same seed).
#
# One device call per phase; the machine stays warm between calls made back to back, so the tokenized cache, the
# Inductor cache and the final checkpoints under /tmp/q carry over (each phase checks what it needs):
#   PHASE=sweep RUNS="mosaic:5e-4:0.06:1000 hf:1e-4:0.06:700 ..."   short runs, one per family:lr:warmup:steps
#   PHASE=final RUNS="mosaic:1e-3:0.06:8000"                        the equal-time runs (one per call: <= 10 min)
#   PHASE=glue  MODELS="mosaic hf" TASKS=cola,sst2 TASK_ARGS="sst2:--epochs=1"   GLUE of the final checkpoints
#                                                                    (scripts/glue.py, one process per model and task)
#   PHASE=prep  RUNS="mosaic:5e-4:0.06:20 hf:2e-4:0.25:20"           tokenize and fill the Inductor cache first
# Carried (git-ignored): .carry/quality/{src.tar.gz (git archive of the commit measured), wiki/train.txt.xz,
# wiki/valid.txt, bert-base-uncased/, whl/ (datasets, dill, multiprocess: the device image lacks them), glue/}.
set -uo pipefail
R=$PWD; C=$R/.carry/quality; Q=/tmp/q; OUT=${OUT:-$R/outputs/quality}
mkdir -p "$OUT" $Q
if [ ! -d $Q/src ]; then mkdir -p $Q/src && tar xzf $C/src.tar.gz -C $Q/src; fi
if ! python3 -c "import datasets" 2>/dev/null && [ -d $C/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $Q/site $C/whl/*.whl
fi
export PYTHONPATH=$Q/src:$Q/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
TASKS=${TASKS:-cola,sst2,mrpc,stsb,rte}
LB=$(command -v stdbuf >/dev/null && echo "stdbuf -oL")   # line-buffered: a cut run keeps its log
cd $Q/src
LOG="$OUT/quality_${PHASE}.log"
{
  echo "commit $(cat COMMIT 2>/dev/null)  phase $PHASE  $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
  python3 -c "import torch, transformers, accelerate, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'triton', triton.__version__)"
} 2>&1 | tee -a "$LOG"
if [ ! -f $Q/wiki/train.txt ]; then
  mkdir -p $Q/wiki && xz -dc $C/wiki/train.txt.xz > $Q/wiki/train.txt && cp $C/wiki/valid.txt $Q/wiki/valid.txt
  touch -d @1700000000 $Q/wiki/train.txt $Q/wiki/valid.txt     # a fixed stat: the cache key stays the same
fi

pretrain() {  # family lr warmup steps tag
  local fam=$1 lr=$2 wu=$3 steps=$4 tag=$5
  local recipe=mosaic-bert-base-uncased; [ "$fam" = hf ] && recipe=hf-bert-base-uncased
  local every=$(( steps / 10 )); every=$(( (every + 9) / 10 * 10 ))
  echo "== $tag: $recipe lr $lr warmup $wu steps $steps (eval every $every)" | tee -a "$LOG"
  timeout ${RUN_LIMIT:-560} python3 scripts/pretrain.py $recipe name=$tag tokenizer.name_or_path=$C/bert-base-uncased \
    data.hub_name=null data.train_files=$Q/wiki/train.txt data.valid_files=$Q/wiki/valid.txt data.mode=chunk \
    data.max_train_docs=null data.max_valid_docs=null data.cache_dir=$Q/cache data.num_workers=4 \
    train.global_batch_size=256 train.microbatch_size=256 train.max_duration=${steps}ba train.lr=$lr train.warmup=$wu \
    train.eval_interval=$every train.log_interval=10 train.eval_samples=4096 train.eval_mlm_probability=0.15 \
    train.checkpoint_interval=$steps train.keep_checkpoints=1 train.output_dir=$Q/runs/$tag \
    2>&1 | $LB tr '\r' '\n' | grep --line-buffered -v -E '^pretrain: |it/s\]$|^$' | tee "$OUT/${tag}.log" | tail -25 \
    | tee -a "$LOG"   # the whole log in $OUT as it grows: a call cut by its time limit still returns it
  cp $Q/runs/$tag/metrics.jsonl "$OUT/${tag}_metrics.jsonl" 2>/dev/null
}

case $PHASE in
  prep|sweep|final)
    for r in $RUNS; do
      IFS=: read -r fam lr wu steps <<< "$r"
      pretrain $fam $lr $wu $steps ${PHASE}_${fam}_lr${lr}_wu${wu}
    done ;;
  glue)
    # One process per (model, task), all at once: fine-tuning at batch 16-32 leaves the GPU mostly idle (launch-
    # bound), so the processes overlap instead of queueing; scores do not depend on wall time. TASK_ARGS adds
    # per-task flags, e.g. TASK_ARGS="sst2:--epochs=1" (the only departure from the paper's recipe we make).
    pids=()
    for m in $MODELS; do
      dir=$(ls -d $Q/runs/final_${m}_* | head -1)
      for t in ${TASKS//,/ }; do
        extra=""; for a in ${TASK_ARGS:-}; do [ "${a%%:*}" = "$t" ] && extra="$extra ${a#*:}"; done
        echo "== GLUE $t of $dir$extra" | tee -a "$LOG"
        ( timeout ${GLUE_LIMIT:-500} python3 scripts/glue.py --model "$dir" --data-dir $C/glue --tasks $t \
            --output-dir $Q/glue_${m}_$t --seeds 1 ${GLUE_ARGS:-} $extra 2>&1 | tr '\r' '\n' \
            | grep -v -E 'it/s\]$|^$|^\{.loss' > "$OUT/glue_${m}_${t}.log"
          cp $Q/glue_${m}_$t/results.json "$OUT/glue_${m}_${t}_results.json" 2>/dev/null ) &
        pids+=($!)
      done
    done
    for p in "${pids[@]}"; do wait $p; done
    for f in "$OUT"/glue_*_*.log; do echo "-- $f"; tail -4 "$f"; done | tee -a "$LOG" ;;
esac
ls $Q/runs 2>/dev/null | tee -a "$LOG"
# BUNDLE=1 (device calls, which return a few files only): everything this call wrote to $OUT in one tarball
if [ -n "${BUNDLE:-}" ]; then
  tar czf /tmp/quality_$PHASE.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/quality_$PHASE.tgz "$OUT/"
fi
