#!/usr/bin/env python
"""Pretrain MosaicBERT with masked language modelling.

  python scripts/pretrain.py                                   # embedded default: small model, Python docs, CPU, minutes
  python scripts/pretrain.py mosaic-bert-base-uncased train.output_dir=runs/base
  accelerate launch --num_processes 8 scripts/pretrain.py mosaic-bert-base-uncased
  python scripts/pretrain.py tiny-default --resume   # continue the latest checkpoint
"""
import sys

from mosaic_bert.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
