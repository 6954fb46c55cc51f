#!/usr/bin/env python
"""Pretrain MosaicBERT with masked language modelling.

  python scripts/pretrain.py                                   # embedded default: small model, Python docs, CPU, minutes
  python scripts/pretrain.py yamls/mosaic-bert-base-uncased.yaml train.output_dir=runs/base
  accelerate launch --num_processes 8 scripts/pretrain.py yamls/mosaic-bert-base-uncased.yaml
  python scripts/pretrain.py yamls/tiny-default.yaml --resume   # continue the latest checkpoint
"""
import sys

from mosaic_bert.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
