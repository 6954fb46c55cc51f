#!/usr/bin/env bash
# GLUE fine-tuning of a BERT checkpoint through scripts/glue.py on one GPU (bf16), from a glue_data folder.
# Used for benchmarks/results/glue_minilm_h100.* with the device `run` tool: carry .carry/glue
# (model folder, GLUE tsv files, and the datasets/dill/multiprocess wheels the device image lacks).
#
#   MODEL=.carry/glue/minilm DATA=.carry/glue/data TASKS=rte,mrpc,stsb,cola SEEDS=1 bash benchmarks/glue_gpu.sh
#
# Preparing .carry/glue here (not part of the run):
#   - model: config/tokenizer files + model.safetensors with float tensors cast to fp16 (halves the carry;
#     the harness loads with dtype=float32, so training keeps fp32 master weights under bf16 autocast)
#   - data:  cp -r ../shared/data/glue/{CoLA,SST-2,MRPC,STS-B,RTE} .carry/glue/data/
#   - wheels: pip download --no-deps --python-version 3.12 ... datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
set -euo pipefail
MODEL=${MODEL:?checkpoint folder}
DATA=${DATA:-.carry/glue/data}
TASKS=${TASKS:-all}
SEEDS=${SEEDS:-}           # empty: the paper's seeds; N: the first N of them
OUTDIR=${OUTDIR:-${OUT:-outputs}/glue}
if [ -d .carry/glue/whl ] && ! python3 -c "import datasets" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/glue/whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L || true
python3 scripts/glue.py --model "$MODEL" --data-dir "$DATA" --tasks "$TASKS" --output-dir "$OUTDIR" \
  ${SEEDS:+--seeds "$SEEDS"} "$@"
