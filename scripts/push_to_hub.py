#!/usr/bin/env python
"""Upload a pretrained folder (weights, config with auto_map, remote code, tokenizer, model card) to the Hub.

  python scripts/push_to_hub.py runs/tiny-default my-user/mosaic-bert-pydocs --private
  python scripts/push_to_hub.py runs/tiny-default my-user/x --local-target /tmp/export   # offline: copy instead
"""
import sys

from mosaic_bert.train.cli import push_to_hub_main

if __name__ == "__main__":
    sys.exit(push_to_hub_main(description=__doc__))
