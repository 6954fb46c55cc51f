#!/usr/bin/env python
"""Train an uncased WordPiece vocabulary on your corpus (for tokenizer.name_or_path=<out>).

  python scripts/train_tokenizer.py data/*.txt.xz --vocab-size 30522 --out tokenizers/my-wordpiece
  python scripts/train_tokenizer.py --hub allenai/c4 --hub-config en --max-docs 1000000 --out tokenizers/c4-wp
"""
import sys

from mosaic_bert.train.cli import train_tokenizer_main

if __name__ == "__main__":
    sys.exit(train_tokenizer_main(description=__doc__))
