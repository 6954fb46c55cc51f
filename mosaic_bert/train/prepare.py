"""The conversion command line (scripts/prepare_data.py, console command mosaic-bert-prepare-data): input files or a
Hub dataset -> a folder of tokenized row shards that pretraining reads with ``data.train_files=<folder>``.

  python scripts/prepare_data.py "c4/en/c4-train.*.json.gz" --out /shared/c4-128 --tokenizer bert-base-uncased \\
      --seq-len 128 --mode truncate --num-proc 16
  python scripts/prepare_data.py --hub allenai/c4 --hub-config en --out s3://bucket/c4-128 --tokenizer bert-base-uncased
  python scripts/pretrain.py mosaic-bert-base-uncased data.train_files=/shared/c4-128 data.hub_name=null

Re-running the same command after an interruption keeps the finished shards. User-fixable errors exit with 2.

Several nodes: convert once (on one machine, or one command per node with disjoint inputs into separate folders is
not supported: one folder per conversion) into a path every node can read -- a shared filesystem (NFS, Lustre) or an
fsspec URL (s3://, gs://, hf://; each process then downloads the shards it reads into data.cache_dir/remote/) -- and
start every node with the same recipe pointing at it, e.g. with torchrun or accelerate:

  accelerate launch --num_machines 2 --machine_rank $RANK --main_process_ip $HEAD --main_process_port 29500 \
      --num_processes 16 scripts/pretrain.py mosaic-bert-base-uncased data.train_files=/shared/c4-128 data.hub_name=null

No rank tokenizes; every rank computes the same global order from (seed, epoch, sample index) and reads only its
rows, so the world size may change between a run and its resume. Without a converted folder the data is converted on
the fly by the main process of the main node into data.cache_dir, which must then be shared by all nodes (the other
processes wait for it and fail with a DataError naming the fix if they cannot see it)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..errors import MosaicBertError


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("inputs", nargs="*", help="files, globs or folders (text/.xz/.gz, jsonl/json(.gz), parquet, csv)")
    ap.add_argument("--out", required=True, help="output folder: a local path or an fsspec URL")
    ap.add_argument("--tokenizer", required=True, help="tokenizer name or local folder (AutoTokenizer)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--mode", default="truncate", choices=["truncate", "chunk", "pack"])
    ap.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="conversion processes (default: cores)")
    ap.add_argument("--valid-files", nargs="*", default=None, help="held-out files (default: a hash share of the inputs)")
    ap.add_argument("--valid-fraction", type=float, default=0.02, help="held-out share without --valid-files")
    ap.add_argument("--format", default="auto", help="auto | text | lines | wiki | json | parquet | csv")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--max-docs", type=int, default=None, help="cap on the training documents read (input order)")
    ap.add_argument("--hub", default=None, help="Hub dataset name, e.g. allenai/c4 (each of its files is one shard)")
    ap.add_argument("--hub-config", default=None, help="e.g. en")
    ap.add_argument("--hub-train-split", default="train")
    ap.add_argument("--hub-valid-split", default="validation", help="'' for none (then no held-out split is made)")
    ap.add_argument("--max-shards", type=int, default=None, help="convert only the first N training shards of --hub")
    a = ap.parse_args(argv)
    if bool(a.hub) == bool(a.inputs):
        ap.error("give input files or --hub (one of them)")
    if a.num_proc < 1:
        ap.error("--num-proc must be >= 1")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    from transformers import AutoTokenizer

    from .data.convert import convert, file_shards, hub_shards
    from .data.sources import resolve_files
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
        except (OSError, ValueError) as e:
            raise MosaicBertError(f"Could not load tokenizer '{a.tokenizer}' ({type(e).__name__}: {e}). Pass a local "
                                  f"folder (e.g. ../shared/tokenizers/bert-base-uncased) or a Hub name.") from e
        if a.hub:
            inputs = hub_shards(a.hub, a.hub_config, a.hub_train_split, a.hub_valid_split or None, a.text_column,
                                a.max_shards)
        else:
            valid = resolve_files(a.valid_files, "--valid-files") if a.valid_files else []
            inputs = file_shards(resolve_files(a.inputs, "inputs"), valid, a.format, a.text_column)
        t0 = time.perf_counter()
        m = convert(inputs, a.out, tokenizer, a.seq_len, a.mode, a.valid_fraction, num_proc=a.num_proc,
                    max_train_docs=a.max_docs)
        dt = time.perf_counter() - t0
        tokens = m["train"]["tokens"] + m["valid"]["tokens"]
        print(f"[prepare] {tokens:,} tokens in {dt:.1f} s ({tokens / dt:,.0f} tokens/s with {a.num_proc} process(es)); "
              f"train with: data.train_files={a.out} data.hub_name=null data.max_seq_len={a.seq_len} data.mode={a.mode}",
              flush=True)
    except MosaicBertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
