#!/usr/bin/env python
"""Pretrain MosaicBERT with masked language modelling.

  python scripts/pretrain.py                                   # embedded default: small model, Python docs, CPU, minutes
  python scripts/pretrain.py yamls/mosaic-bert-base-uncased.yaml train.output_dir=runs/base
  accelerate launch --num_processes 8 scripts/pretrain.py yamls/mosaic-bert-base-uncased.yaml
  python scripts/pretrain.py yamls/tiny-default.yaml --resume   # continue the latest checkpoint
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mosaic_bert.pretrain import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
