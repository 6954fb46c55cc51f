#!/usr/bin/env python
"""Upload a pretrained folder (weights, config with auto_map, remote code, tokenizer, model card) to the Hub.

  python scripts/push_to_hub.py runs/tiny-default my-user/mosaic-bert-pydocs --private
  python scripts/push_to_hub.py runs/tiny-default my-user/x --local-target /tmp/export   # offline: copy instead
"""
import argparse
import sys

from mosaic_bert.errors import MosaicBertError
from mosaic_bert.train.export import push_folder


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="output_dir of a finished pretraining run")
    ap.add_argument("repo_id", nargs="?", help="Hub repo id, e.g. user/mosaic-bert-mydomain")
    ap.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    ap.add_argument("--private", action="store_true")
    ap.add_argument("--local-target", default=None, help="copy the publishable files to this folder instead of uploading")
    ap.add_argument("--message", default="Upload MosaicBERT")
    a = ap.parse_args(argv)
    try:
        where = push_folder(a.folder, a.repo_id, a.revision, a.private, a.local_target, a.message)
    except MosaicBertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"uploaded {a.folder} -> {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
