"""The GLUE command line (``scripts/glue.py``, ``mosaic-bert-glue``): fine-tune and evaluate a BERT on GLUE with
the MosaicBERT paper's recipe. Exit status 0, or 2 with the fix for a user-fixable error.

Examples:
  python scripts/glue.py --model runs/mosaic-bert --tasks all --data-dir ../shared/data/glue
  python scripts/glue.py --model bert-base-uncased --tasks rte,mrpc --data-dir hub
  python scripts/glue.py --model M --tasks sst2 --data-dir D --max-train-samples 256 --epochs 1 --seeds 1
"""

import argparse
import logging
import sys

from ..errors import MosaicBertError
from .finetune import run_glue
from .tasks import TASKS


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    p.add_argument("--trust-remote-code", action=argparse.BooleanOptionalAction, default=None,
                   help="run the model's own code (default: yes for a local folder that ships it, e.g. a "
                        "pretraining output folder; no for a Hub id: review its code, then pass this flag)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or Hub id (default: --model)")
    p.add_argument("--tasks", default="all", help=f"'all' or a comma list of {','.join(TASKS)}")
    p.add_argument("--data-dir", default="hub",
                   help="glue_data folder (<TASK>/train.tsv, dev.tsv) or 'hub' for nyu-mll/glue")
    p.add_argument("--output-dir", default="outputs/glue")
    p.add_argument("--seeds", default=None,
                   help="override: an int N (first N of each task's paper seeds) or a comma list of seeds")
    p.add_argument("--epochs", type=int, default=None, help="override every task's epoch count")
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--mnli-checkpoint", default=None,
                   help="MNLI-fine-tuned checkpoint that RTE/MRPC/STS-B start from (default: the one "
                        "this run makes when mnli is among --tasks)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--max-grad-norm", type=float, default=0.0, help="gradient clipping (default 0: none, as the paper)")
    p.add_argument("--no-resume", action="store_true",
                   help="re-run tasks already in OUTPUT_DIR/results.json (default: keep them)")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 on GPU")
    p.add_argument("--torch-compile", action="store_true", help="run the model under torch.compile (Trainer's option)")
    a = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    seeds = num_seeds = None
    if a.seeds:
        try:
            if "," in a.seeds:
                seeds = [int(s) for s in a.seeds.split(",") if s]
            else:
                num_seeds = int(a.seeds)
        except ValueError:
            p.error(f"--seeds {a.seeds!r}: give a count N (the first N paper seeds) or a comma list of integer seeds")
    try:
        res = run_glue(
            a.model, a.tasks, a.data_dir, a.output_dir, tokenizer=a.tokenizer, seeds=seeds,
            num_seeds=num_seeds, epochs=a.epochs, max_train_samples=a.max_train_samples,
            max_eval_samples=a.max_eval_samples, mnli_checkpoint=a.mnli_checkpoint,
            bf16=False if a.no_bf16 else None, max_length=a.max_length, max_grad_norm=a.max_grad_norm,
            resume=not a.no_resume, torch_compile=a.torch_compile, trust_remote_code=a.trust_remote_code,
        )
    except MosaicBertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    g = res["glue"]
    print(f"GLUE ({'all 8' if g['complete'] else ', '.join(g['tasks'])}): {g['score']:.2f}  "
          f"-> {a.output_dir}/results.md")
