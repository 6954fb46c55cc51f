#!/usr/bin/env python
"""Fine-tune and evaluate a BERT on GLUE with the MosaicBERT paper's recipe.

Examples:
  python scripts/glue.py --model runs/mosaic-bert --tasks all --data-dir ../shared/data/glue
  python scripts/glue.py --model bert-base-uncased --tasks rte,mrpc --data-dir hub
  python scripts/glue.py --model M --tasks sst2 --data-dir D --max-train-samples 256 --epochs 1 --seeds 1
"""
import sys

from mosaic_bert.glue.cli import main

if __name__ == "__main__":
    sys.exit(main())
