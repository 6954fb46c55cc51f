"""Data at C4 scale, on small shards: conversion (parallel, resumable, byte-identical), training reads without
loading (RSS and first batch flat in the shard count, O(1) order), any world size sees the same global samples,
exact resume, a second node never tokenizes, remote (fsspec) folders, clear errors."""

import contextlib
import importlib
import gzip
import json
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from mosaic_bert.errors import DataError
from mosaic_bert.train.config import DataConfig, TokenizerConfig
from mosaic_bert.train.data import (BatchPlan, DocumentEncoder, TokenizedSplit, TrainLoader, TrainMicrobatches,
                                    build_data, convert, file_shards, global_rows, is_converted, permute)
from mosaic_bert.train.masking import MLMMasker

FIX = Path(__file__).resolve().parents[1] / "fixtures"
SMALL = FIX / "pretrain" / "pydocs_small.txt"
QUIET = lambda *a: None   # noqa: E731
convert_mod = importlib.import_module("mosaic_bert.train.data.convert")   # the module (the package exports the function)


@pytest.fixture(scope="module")
def docs():
    return [line.strip() for line in SMALL.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(FIX / "bert-base-uncased"))


def c4_layout(folder: Path, docs, shards: int) -> list[str]:
    """C4's layout: c4-train.NNNNN-of-MMMMM.json.gz, one JSON object per line with text/timestamp/url."""
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(docs) // shards)
    paths = []
    for s in range(shards):
        p = folder / f"c4-train.{s:05d}-of-{shards:05d}.json.gz"
        with gzip.open(p, "wt") as f:
            for i, d in enumerate(docs[s * per:(s + 1) * per]):
                f.write(json.dumps({"text": d, "timestamp": "2019-04-25T12:00:00Z", "url": f"https://x/{s}/{i}"}) + "\n")
        paths.append(str(p))
    return paths


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, docs, tok):
    """4 C4-layout shards converted in one process: (input paths, output folder)."""
    root = tmp_path_factory.mktemp("conv")
    paths = c4_layout(root / "in", docs, 4)
    convert(file_shards(paths, []), str(root / "one"), tok, 32, "truncate", 0.1, num_proc=1, log=QUIET)
    return paths, root / "one"


# ------------------------------------------------------------------------------------------------ conversion
def test_truncate_tokenizes_only_a_prefix_and_gets_the_whole_documents_rows(tok, docs):
    long_docs = [" ".join(docs[i:i + 12]) for i in range(0, 120, 12)] + ["x" * 3000, "a" * 50 + " " + "bb " * 900]
    seen = []
    real = type(tok).__call__

    def spy(self, texts, **kw):
        seen.extend(len(t) for t in texts)
        return real(self, texts, **kw)

    enc = DocumentEncoder(tok, 32, "truncate")
    type(tok).__call__ = spy
    try:
        enc.add(long_docs)
    finally:
        type(tok).__call__ = real
    arrs, n = enc.finish()
    whole = tok(long_docs, add_special_tokens=False)["input_ids"]   # reference: every whole document
    assert n == len(long_docs)
    for r, w in enumerate(whole):
        assert arrs["ids"][r, 1:arrs["lengths"][r] - 1].tolist() == w[:30]
    assert max(seen) <= 30 * 128 and sum(seen) < 0.5 * sum(map(len, long_docs))   # most text never tokenized


def test_conversion_reads_c4_layout_and_is_byte_identical_whatever_num_proc(tmp_path, converted, docs, tok):
    paths, one = converted
    m = json.loads((one / "manifest.json").read_text())
    assert m["documents_read"] == len(docs) and [s["name"] for s in m["train"]["shards"]] == [f"{i:05d}" for i in range(4)]
    assert m["train"]["rows"] + m["valid"]["rows"] == len(docs)          # truncate: one row per document
    convert(file_shards(paths, []), str(tmp_path / "two"), tok, 32, "truncate", 0.1, num_proc=2, log=QUIET)
    assert tree(tmp_path / "two") == tree(one)
    split = TokenizedSplit(one, "train")
    ids, att, n = split.rows(np.arange(len(split)))
    from mosaic_bert.train.data.sources import doc_hash_bucket
    kept = [d for d in docs if doc_hash_bucket(d) >= 0.1]                # the held-out rule, recomputed
    ref = tok(kept, add_special_tokens=False, truncation=True, max_length=30)["input_ids"]
    assert [ids[r, 1:n[r] - 1].tolist() for r in range(len(split))] == ref
    assert (att.sum(1) == n).all()


def test_document_cap_keeps_the_first_documents_whatever_num_proc(tmp_path, converted, docs, tok):
    paths, _ = converted
    trees = []
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        m = convert(file_shards(paths, []), str(out), tok, 32, "truncate", 0.1, num_proc=procs, max_train_docs=250,
                    log=QUIET)
        assert m["documents_read"] == 250 and [s["name"] for s in m["train"]["shards"]] == ["00000", "00001", "00002"]
        assert not (out / "train" / "00003.ids.npy").exists() and not (out / "done" / "00003.json").exists()
        trees.append(tree(out))
    assert trees[0] == trees[1]
    from mosaic_bert.train.data.sources import doc_hash_bucket
    split = TokenizedSplit(tmp_path / "p1", "train")
    assert len(split) == sum(doc_hash_bucket(d) >= 0.1 for d in docs[:250])   # the first 250 documents, in order


def test_hub_dataset_one_job_per_data_file(tmp_path, docs, tok, monkeypatch):
    """--hub: each data file of the split is one input shard (IterableDataset.shard), on a local stand-in."""
    import datasets

    from mosaic_bert.train.data import hub_shards
    files = {"train": [], "validation": []}
    for split, chunks in (("train", [docs[:150], docs[150:300], docs[300:380]]), ("validation", [docs[380:]])):
        for j, chunk in enumerate(chunks):
            p = tmp_path / f"{split}-{j}.jsonl"
            p.write_text("".join(json.dumps({"text": d}) + "\n" for d in chunk))
            files[split].append(str(p))
    real = datasets.load_dataset

    def fake(name, config=None, split=None, streaming=False, **kw):
        if name != "allenai/c4":
            return real(name, config, split=split, streaming=streaming, **kw)
        return real("json", data_files=files[split], split="train", streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    inputs = hub_shards("allenai/c4", "en", "train", "validation", max_shards=2)
    assert [(s.role, s.index, s.count) for s in inputs] == [("train", 0, 3), ("train", 1, 3), ("valid", 0, 1)]
    m = convert(inputs, str(tmp_path / "out"), tok, 32, "truncate", num_proc=1, log=QUIET)
    assert [s["documents"] for s in m["train"]["shards"]] == [150, 150] and m["valid"]["documents"] == 20


def test_interrupted_conversion_resumes_with_identical_shards(tmp_path, converted, tok, monkeypatch):
    paths, one = converted
    out = tmp_path / "out"
    real_add, calls = DocumentEncoder.add, []

    def dies_in_shard_2(self, batch):
        if calls.count("start") >= 3:
            raise KeyboardInterrupt("killed")
        return real_add(self, batch)

    real_convert_shard = convert_mod.convert_shard

    def counted(*a, **kw):
        calls.append("start")
        return real_convert_shard(*a, **kw)

    monkeypatch.setattr(convert_mod, "convert_shard", counted)
    monkeypatch.setattr(DocumentEncoder, "add", dies_in_shard_2)
    with pytest.raises(KeyboardInterrupt):
        convert(file_shards(paths, []), str(out), tok, 32, "truncate", 0.1, num_proc=1, log=QUIET)
    assert sorted(p.name for p in (out / "done").iterdir()) == ["00000.json", "00001.json"]
    assert not (out / "manifest.json").exists()
    (out / "train" / "00002.ids.npy.tmp-99999").write_bytes(b"half a file")   # a write cut by the kill
    (out / "train" / "00003.ids.npy").write_bytes(b"garbage")                # no marker: redone
    monkeypatch.setattr(DocumentEncoder, "add", real_add)
    calls.clear()
    convert(file_shards(paths, []), str(out), tok, 32, "truncate", 0.1, num_proc=1, log=QUIET)
    assert len(calls) == 2                                                     # shards 0 and 1 were kept
    assert tree(out) == tree(one)


def test_conversion_errors_name_the_fix(tmp_path, converted, tok):
    paths, one = converted
    with pytest.raises(DataError, match="holds another conversion"):
        convert(file_shards(paths, []), str(one), tok, 64, "truncate", 0.1, log=QUIET)
    with pytest.raises(DataError, match="mode must be"):
        convert(file_shards(paths, []), str(tmp_path / "x"), tok, 32, "cut", 0.1, log=QUIET)
    with pytest.raises(DataError, match="held-out split is empty"):
        convert(file_shards(paths[:1], []), str(tmp_path / "y"), tok, 32, "truncate", 0.0, log=QUIET)
    with pytest.raises(DataError, match="no manifest.json"):
        TokenizedSplit(tmp_path / "y", "train")
    (tmp_path / "z").mkdir()
    with pytest.raises(DataError, match="not a finished converted folder"):
        TokenizedSplit(tmp_path / "z", "train")


def test_prepare_cli_and_a_remote_fsspec_folder(tmp_path, converted, tok):
    paths, one = converted
    from mosaic_bert.train.prepare import main
    assert main(paths + ["--out", str(tmp_path / "cli"), "--tokenizer", str(FIX / "bert-base-uncased"), "--seq-len",
                         "32", "--valid-fraction", "0.1", "--num-proc", "1"]) == 0
    assert tree(tmp_path / "cli") == tree(one)
    assert main(["nope/*.json.gz", "--out", str(tmp_path / "e"), "--tokenizer", str(FIX / "bert-base-uncased")]) == 2
    url = f"memory://h11-{os.getpid()}/c4"                                    # an fsspec URL: written and read remotely
    convert(file_shards(paths, []), url, tok, 32, "truncate", 0.1, num_proc=1, log=QUIET)
    assert is_converted(url)
    remote, local = TokenizedSplit(url, "train", local_cache=tmp_path / "cache"), TokenizedSplit(one, "train")
    idx = np.array([5, 300, 0, 17, len(local) - 1])
    for a, b in zip(remote.rows(idx), local.rows(idx)):
        np.testing.assert_array_equal(a, b)
    assert remote.mapped_shards < len(remote.shards)                          # only the shards read were fetched
    from mosaic_bert.train.data.shards import local_copy
    fetched = sorted(p.relative_to(tmp_path / "cache") for p in (tmp_path / "cache").rglob("*.npy"))
    assert fetched and all(p.parts[0] == local_copy(url, "x").name for p in fetched)   # one folder per URL, not nested
    import pickle
    local.rows(np.arange(len(local)))                                          # every shard mapped ...
    assert local.mapped_shards == len(local.shards) and len(pickle.dumps(local)) < 4096   # ... none sent to workers


# ------------------------------------------------------------------------------------------------ reading
def test_order_is_a_keyed_bijection_with_o1_memory():
    for n in (1, 2, 3, 7, 1000, 4097):
        p = permute(11, 0, n, np.arange(n))
        assert sorted(p.tolist()) == list(range(n))                            # a bijection of [0, n)
    p0, p1 = permute(11, 0, 1000, np.arange(1000)), permute(11, 1, 1000, np.arange(1000))
    assert (p0 != p1).mean() > 0.9 and (p0 != permute(12, 0, 1000, np.arange(1000))).mean() > 0.9
    assert abs(np.corrcoef(np.arange(1000), p0)[0, 1]) < 0.15 and (p0 == np.arange(1000)).sum() < 10  # shuffled
    np.testing.assert_array_equal(permute(11, 0, 1000, [999, 3, 500]), p0[[999, 3, 500]])  # any index alone
    tracemalloc.start()
    rows = global_rows(5, 3 * 10**8, np.arange(10**9, 10**9 + 4096))          # C4-sized: no table of 3e8 rows
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 << 20 and len(set(rows.tolist())) == 4096


def _tiled_folder(src: Path, dst: Path, shards: int, rows_per_shard: int):
    """A converted folder of ``shards`` shards of ``rows_per_shard`` rows each, tiled from ``src``'s first shard."""
    m = json.loads((src / "manifest.json").read_text())
    ids = np.load(src / "train" / "00000.ids.npy")
    lengths = np.load(src / "train" / "00000.lengths.npy")
    reps = -(-rows_per_shard // len(ids))
    (dst / "train").mkdir(parents=True)
    (dst / "valid").mkdir()
    entries = []
    for s in range(shards):
        np.save(dst / "train" / f"{s:05d}.ids.npy", np.tile(ids, (reps, 1))[:rows_per_shard])
        np.save(dst / "train" / f"{s:05d}.lengths.npy", np.tile(lengths, reps)[:rows_per_shard])
        entries.append({"name": f"{s:05d}", "rows": rows_per_shard, "tokens": 0, "documents": rows_per_shard})
    for f in (src / "valid").iterdir():
        (dst / "valid" / f.name).write_bytes(f.read_bytes())
    m["train"] = {**m["train"], "shards": entries, "rows": shards * rows_per_shard}
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_rss_and_first_batch_flat_from_1_to_20_shards(tmp_path, converted, tok):
    import psutil
    _, one = converted
    proc = psutil.Process()
    masker = MLMMasker.from_tokenizer(tok, 0.3, 0)
    plan = BatchPlan(seed=1, global_batch=64, microbatch=64)
    result = {}
    for shards in (1, 20):   # 20 shards of 60k rows of 32 ids: 77 MB of ids a loader must not read into memory
        folder = _tiled_folder(one, tmp_path / f"s{shards}", shards, 60_000)
        # anonymous RSS (rss - shared): what a process holds; mapped file pages are page cache the kernel can drop
        # (a first touch maps whole large folios, ~1 MB per shard here, which would blur an rss comparison)
        anon = lambda: proc.memory_info().rss - proc.memory_info().shared   # noqa: E731
        rss0, t0 = anon(), time.perf_counter()
        split = TokenizedSplit(folder, "train")
        _, micro = next(iter(TrainLoader(split, masker, plan, total_steps=1)))
        result[shards] = (anon() - rss0, time.perf_counter() - t0, split.mapped_shards)
        assert micro[0]["input_ids"].shape[0] == 64
    (d1, t1, _), (d20, t20, mapped) = result[1], result[20]
    assert d20 < d1 + (16 << 20), result                     # not the 77 MB (nor the order table) of 20 shards
    assert t20 < 5 * max(t1, 0.05), result                   # generous: time to the first batch does not scale
    assert mapped <= 20                                      # (64 random rows touch at most every shard)


def _folder_split(converted):
    return TokenizedSplit(converted[1], "train")


@pytest.mark.parametrize("accum", [1, 2])
def test_1_2_4_ranks_cover_the_same_global_samples(converted, tok, accum):
    split, masker = _folder_split(converted), MLMMasker.from_tokenizer(tok, 0.3, 0)
    G, steps = 32, 3
    ref = {}
    for world in (1, 2, 4):
        mb = G // (world * accum)
        per_rank = [TrainMicrobatches(split, masker, BatchPlan(7, G, mb, accum, world, r), 0, steps, trim=False)
                    for r in range(world)]
        for step in range(steps):
            # a step's microbatches in global order: accumulation a of rank r is micro index a * world + r
            parts = [per_rank[r][step * accum + a] for a in range(accum) for r in range(world)]
            got = {k: np.concatenate([p[k].numpy() for p in parts]) for k in ("input_ids", "attention_mask", "labels")}
            if world == 1:
                ref[step] = got
            for k in got:
                np.testing.assert_array_equal(got[k], ref[step][k])
    rows = global_rows(7, len(split), np.arange(steps * G))
    ids, _, _ = split.rows(rows)
    assert ((ref[0]["input_ids"] == ids[:G]) | (ref[0]["labels"] != -100)).all()   # the order's rows, masked


@pytest.mark.parametrize("workers", [0, 2])
def test_stop_at_step_k_and_resume_gives_identical_batches(converted, tok, workers):
    split, masker = _folder_split(converted), MLMMasker.from_tokenizer(tok, 0.3, 0)
    plan = BatchPlan(3, 16, 8, accum=2)
    straight = list(TrainLoader(split, masker, plan, total_steps=6, num_workers=workers))
    first = TrainLoader(split, masker, plan, total_steps=6, num_workers=workers)
    it = iter(first)
    for _ in range(4):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))              # as a checkpoint stores it
    del it
    resumed = TrainLoader(split, masker, plan, total_steps=6, num_workers=workers)
    resumed.load_state_dict(state)
    got = list(resumed)
    assert [s for s, _ in got] == [4, 5]
    for (s1, m1), (s2, m2) in zip(straight[4:], got, strict=True):
        for a, b in zip(m1, m2, strict=True):
            for k in a:
                assert (a[k] == b[k]).all()


# ------------------------------------------------------------------------------------------------ nodes
class _OtherNode:
    """An Accelerate stand-in for a process that is not the main one."""
    is_main_process = False
    main_process_first = staticmethod(contextlib.nullcontext)


def test_a_second_node_with_an_empty_cache_reads_the_folder_and_never_tokenizes(tmp_path, converted, monkeypatch):
    _, one = converted
    import transformers

    def no(*a, **kw):
        raise AssertionError("tokenized on a node that has the converted folder")

    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "__call__", no)
    monkeypatch.setattr(DocumentEncoder, "add", no)
    monkeypatch.setattr(convert_mod, "convert_shard", no)
    import mosaic_bert.train.tokenizer as tokmod
    monkeypatch.setattr(tokmod, "train_wordpiece", no)
    cfg = DataConfig(train_files=str(one), cache_dir=str(tmp_path / "empty"), max_seq_len=32)
    data = build_data(cfg, TokenizerConfig(), _OtherNode(), log=QUIET)
    assert len(data.train) + len(data.valid) == 400 and data.meta["train"]["rows"] == len(data.train)
    assert data.tokenizer.get_vocab() == transformers.AutoTokenizer.from_pretrained(str(FIX / "bert-base-uncased")).get_vocab()
    ids, _, _ = data.train.rows(np.arange(4))
    assert (ids[:, 0] == data.tokenizer.cls_token_id).all()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "spec.json").write_text((one / "spec.json").read_text())
    with pytest.raises(DataError, match="did not finish"):
        build_data(DataConfig(train_files=str(unfinished), max_seq_len=32), TokenizerConfig(), _OtherNode(), log=QUIET)
    bad = DataConfig(train_files=str(one), cache_dir=str(tmp_path / "empty"), max_seq_len=64)
    with pytest.raises(DataError, match="data.max_seq_len=32 data.mode=truncate"):
        build_data(bad, TokenizerConfig(), _OtherNode(), log=QUIET)
    # converting on the fly: a process that is not the main one never converts; it needs the shared cache
    fly = DataConfig(train_files=str(SMALL), cache_dir=str(tmp_path / "not-shared"), max_seq_len=32)
    from mosaic_bert.train.data import build_or_load_cache
    with pytest.raises(DataError, match="set data.cache_dir to a folder every process"):
        build_or_load_cache(fly, data.tokenizer, log=QUIET, is_main=False)


def test_pretrain_runs_on_a_converted_folder(tmp_path, converted):
    """scripts/pretrain.py with data.train_files = a converted folder: its own tokenizer, no tokenizing, a finished run."""
    import subprocess
    import sys
    _, one = converted
    root = Path(__file__).resolve().parents[2]
    args = {"model.hidden_size": 32, "model.num_hidden_layers": 1, "model.num_attention_heads": 2,
            "model.intermediate_size": 64, "model.max_position_embeddings": 64, "model.alibi_starting_size": 64,
            "data.train_files": str(one), "data.max_seq_len": 32, "data.cache_dir": str(tmp_path / "cache"),
            "train.global_batch_size": 8, "train.microbatch_size": 4, "train.max_duration": "3ba",
            "train.log_interval": 1, "train.eval_interval": 3, "train.eval_samples": 8, "train.checkpoint_interval": 3,
            "train.output_dir": str(tmp_path / "run"), "train.trackers": "none", "train.fill_mask_example": "null"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, str(root / "scripts" / "pretrain.py")] + [f"{k}={v}" for k, v in args.items()],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "tokenizing" not in p.stdout and not (tmp_path / "cache" / "tokenized").exists()
    assert f"{json.loads((one / 'manifest.json').read_text())['train']['rows']:,} train rows" in p.stdout
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(str(tmp_path / "run")).get_vocab() == \
        AutoTokenizer.from_pretrained(str(one / "tokenizer")).get_vocab()


# ------------------------------------------------------------------------------------------------ streaming
@pytest.mark.parametrize("files,workers", [(2, 0), (1, 1)])
def test_streaming_splits_ranks_and_resumes_exactly(tmp_path, docs, tok, files, workers):
    """A streamed dataset (datasets.load_dataset(..., streaming=True) over local json files): ranks read disjoint
    documents (split_dataset_by_node: whole files for 2 files, every other example for 1), and stopping at step k
    then resuming from the state gives the same batches."""
    import datasets
    import torch

    from mosaic_bert.train.data.streaming import StreamingTrainLoader
    paths = []
    per = len(docs) // files
    for j in range(files):
        p = tmp_path / f"part-{j}.jsonl"
        p.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[j * per:(j + 1) * per]))
        paths.append(str(p))
    open_stream = lambda: datasets.load_dataset("json", data_files=paths, split="train", streaming=True)  # noqa: E731
    masker = MLMMasker.from_tokenizer(tok, 0.3, 0)
    originals = {}
    for rank in range(2):
        plan = BatchPlan(5, 16, 4, accum=2, num_processes=2, rank=rank)
        straight = list(StreamingTrainLoader(open_stream, tok, masker, plan, 6, seq_len=32, num_workers=workers))
        assert [s for s, _ in straight] == list(range(6))
        first = StreamingTrainLoader(open_stream, tok, masker, plan, 6, seq_len=32, num_workers=workers)
        it = iter(first)
        for _ in range(3):
            next(it)
        state = json.loads(json.dumps(first.state_dict()))
        resumed = StreamingTrainLoader(open_stream, tok, masker, plan, 6, seq_len=32, num_workers=workers)
        resumed.load_state_dict(state)
        for (s1, m1), (s2, m2) in zip(straight[3:], resumed, strict=True):
            for a, b in zip(m1, m2, strict=True):
                for k in ("input_ids", "attention_mask", "labels"):
                    assert (a[k] == b[k]).all(), (rank, s1, k)
        rows = set()
        for _, micro in straight:
            for m in micro:   # the unmasked ids: labels where masked, else the input
                orig = torch.where(m["labels"] != -100, m["labels"], m["input_ids"])
                rows |= {tuple(r[r != 0].tolist()) for r in orig}
        originals[rank] = rows
    assert originals[0] and originals[1] and not originals[0] & originals[1]     # disjoint shares of the stream
    expected = {tuple([tok.cls_token_id] + t + [tok.sep_token_id])
                for t in tok(docs, add_special_tokens=False, truncation=True, max_length=30)["input_ids"]}
    assert originals[0] | originals[1] <= expected
    wrong_world = StreamingTrainLoader(open_stream, tok, masker, BatchPlan(5, 16, 8, accum=2), 6, seq_len=32)
    with pytest.raises(DataError, match="world size it started with"):
        wrong_world.load_state_dict(state)

