#!/usr/bin/env python
"""Convert text files or a Hub dataset into tokenized row shards that pretraining memory-maps.

  python scripts/prepare_data.py "c4/en/*.json.gz" --out data/c4-128 --tokenizer bert-base-uncased --num-proc 16
  python scripts/pretrain.py mosaic-bert-base-uncased data.train_files=data/c4-128 data.hub_name=null
"""
import sys

from mosaic_bert.train.prepare import main

if __name__ == "__main__":
    sys.exit(main())
