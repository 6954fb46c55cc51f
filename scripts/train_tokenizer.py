#!/usr/bin/env python
"""Train an uncased WordPiece vocabulary on your corpus (for tokenizer.name_or_path=<out>).

  python scripts/train_tokenizer.py data/*.txt.xz --vocab-size 30522 --out tokenizers/my-wordpiece
  python scripts/train_tokenizer.py --hub allenai/c4 --hub-config en --max-docs 1000000 --out tokenizers/c4-wp
"""
import argparse
import sys

from mosaic_bert.errors import MosaicBertError
from mosaic_bert.train.data import iter_documents_from_files, iter_hub_documents, resolve_files, take
from mosaic_bert.train.tokenizer import train_wordpiece


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="text/jsonl/parquet files or globs (.xz/.gz ok)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab-size", type=int, default=30522)
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--format", default="auto")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--hub", default=None, help="Hub dataset name (streamed)")
    ap.add_argument("--hub-config", default=None)
    ap.add_argument("--cased", action="store_true")
    a = ap.parse_args(argv)
    try:
        if a.hub:
            docs = iter_hub_documents(a.hub, a.hub_config, "train", a.text_column)
        else:
            if not a.files:
                ap.error("give files or --hub")
            docs = iter_documents_from_files(resolve_files(a.files, "files"), a.format, a.text_column)
        train_wordpiece(take(docs, a.max_docs), a.vocab_size, a.out, lowercase=not a.cased)
    except MosaicBertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
