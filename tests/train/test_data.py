"""Data: readers (wiki blocks, lines, .xz, jsonl), clear errors, the tokenized cache, packing, deterministic order."""

import json
import lzma
from pathlib import Path

import numpy as np
import pytest

from mosaic_bert.errors import DataError
from mosaic_bert.train.data import (BatchPlan, TokenizedSplit, TrainMicrobatches, build_or_load_cache, global_rows,
                                    iter_documents_from_files, resolve_files)
from mosaic_bert.train.tokenizer import train_wordpiece
from mosaic_bert.train.masking import MLMMasker
from mosaic_bert.train.config import DataConfig

SMALL = Path(__file__).resolve().parents[1] / "fixtures" / "pretrain" / "pydocs_small.txt"


@pytest.fixture(scope="module")
def docs():
    return [line.strip() for line in SMALL.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, docs):
    return train_wordpiece(docs, 600, tmp_path_factory.mktemp("tok") / "wp", log=lambda *a: None)


def test_wiki_blocks_xz_and_lines(tmp_path, docs):
    # Wikipedia dump layout: title line, one paragraph per line, blank line between articles
    text = "Title One\npara a one.\npara a two.\n\nTitle Two\npara b.\n\n\nTitle Three\npara c.\n"
    p = tmp_path / "wiki.txt.xz"
    with lzma.open(p, "wt") as f:
        f.write(text)
    out = list(iter_documents_from_files([str(p)], "auto", "text"))
    assert out == ["Title One para a one. para a two.", "Title Two para b.", "Title Three para c."]
    lines = list(iter_documents_from_files([str(SMALL)], "auto", "text"))  # no blank lines: one document per line
    assert lines == docs
    assert list(iter_documents_from_files([str(p)], "lines", "text"))[:2] == ["Title One", "para a one."]


def test_jsonl_through_datasets(tmp_path, docs):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[:20])))
    assert list(iter_documents_from_files([str(p)], "auto", "text")) == docs[:20]
    with pytest.raises(DataError, match="no column 'body'"):
        list(iter_documents_from_files([str(p)], "auto", "body"))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="matches no file"):
        resolve_files(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="matches no file"):
        resolve_files(str(tmp_path / "*.jsonl"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        resolve_files(str(tmp_path / "empty.txt"))
    (tmp_path / "a.txt").write_text("x y z\n")
    (tmp_path / "b.txt").write_text("x y z\n")
    assert resolve_files(str(tmp_path / "[ab].txt")) == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]


def _held_out(docs, fraction):
    from mosaic_bert.train.data.sources import doc_hash_bucket
    return [d for d in docs if doc_hash_bucket(d) < fraction]


def test_cache_truncate_and_reuse(tmp_path, tokenizer, docs):
    cfg = DataConfig(train_files=str(SMALL), cache_dir=str(tmp_path), max_seq_len=32, valid_fraction=0.1)
    folder, meta = build_or_load_cache(cfg, tokenizer, log=lambda *a: None)
    tr, va = TokenizedSplit(folder, "train"), TokenizedSplit(folder, "valid")
    assert len(tr) + len(va) == 400 and len(va) > 10             # one sample per document, hash held-out split
    ids, _, lengths = tr.rows(np.arange(len(tr)))
    assert ids.shape[1] == 32 and (ids[:, 0] == tokenizer.cls_token_id).all()
    assert (lengths <= 32).all() and (lengths == 32).any()  # truncated
    last = ids[np.arange(len(tr)), lengths - 1]
    assert (last == tokenizer.sep_token_id).all()
    # the rows are those of tokenizing each whole document (no prefix cut), in file order
    kept = [d for d in docs if d not in set(_held_out(docs, 0.1))]
    whole = tokenizer(kept, add_special_tokens=False)["input_ids"]
    for r in range(len(tr)):
        assert ids[r, 1:lengths[r] - 1].tolist() == whole[r][:30]
    folder2, _ = build_or_load_cache(cfg, tokenizer, log=lambda *a: pytest.fail("re-tokenized"))
    assert folder2 == folder
    cfg.max_seq_len = 64                                          # a different key -> another cache
    folder3, _ = build_or_load_cache(cfg, tokenizer, log=lambda *a: None)
    assert folder3 != folder


def test_cache_pack_document_ids(tmp_path, tokenizer):
    cfg = DataConfig(train_files=str(SMALL), cache_dir=str(tmp_path), max_seq_len=64, mode="pack", valid_fraction=0.1)
    folder, meta = build_or_load_cache(cfg, tokenizer, log=lambda *a: None)
    tr = TokenizedSplit(folder, "train")
    all_ids, all_docs, all_n = tr.rows(np.arange(len(tr)))
    assert (all_docs.max(1) > 1).mean() > 0.1         # many rows hold several documents
    for r in range(20):
        ids, docs, n = all_ids[r], all_docs[r], all_n[r]
        assert (docs[:n] > 0).all() and (docs[n:] == 0).all()
        assert (np.diff(docs[:n].astype(int)) >= 0).all() and docs[0] == 1
        starts = np.flatnonzero(np.diff(np.concatenate([[0], docs[:n].astype(int)])) != 0)
        assert (ids[starts] == tokenizer.cls_token_id).all()       # every document starts with [CLS]


def test_order_is_a_pure_function_of_seed_and_splits_like_one_process(tmp_path, tokenizer):
    n = 50
    g = np.arange(3 * n)
    rows = global_rows(5, n, g)
    for e in range(3):
        assert sorted(rows[e * n:(e + 1) * n]) == list(range(n))   # each epoch is a permutation
    assert (rows[:n] != rows[n:2 * n]).any()                       # reshuffled per epoch
    np.testing.assert_array_equal(global_rows(5, n, g[37:90]), rows[37:90])  # skip by position

    cfg = DataConfig(train_files=str(SMALL), cache_dir=str(tmp_path), max_seq_len=32)
    folder, _ = build_or_load_cache(cfg, tokenizer, log=lambda *a: None)
    split = TokenizedSplit(folder, "train")
    masker = MLMMasker.from_tokenizer(tokenizer, 0.3, 0)
    one = TrainMicrobatches(split, masker, BatchPlan(seed=3, global_batch=16, microbatch=8, accum=2), 0, 4, trim=False)
    two = [TrainMicrobatches(split, masker, BatchPlan(3, 16, 8, accum=1, num_processes=2, rank=r), 0, 4, trim=False)
           for r in range(2)]
    for step in range(4):
        for a in range(2):   # 1 process, accumulation a  ==  process a of 2, no accumulation
            b1, b2 = one[step * 2 + a], two[a][step]
            for k in ("input_ids", "labels", "attention_mask"):
                assert (b1[k] == b2[k]).all()
    resumed = TrainMicrobatches(split, masker, BatchPlan(3, 16, 8, accum=2), 2, 4, trim=False)
    assert (resumed[0]["input_ids"] == one[4]["input_ids"]).all()   # resume at step 2 = straight run's step 2


def test_hub_streaming_path_on_local_files(tmp_path, tokenizer, docs, monkeypatch):
    """The Hub branch (datasets.load_dataset(name, config, split=..., streaming=True)) on a local stand-in."""
    import datasets
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:120]))
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[120:140]))
    calls = []
    real = datasets.load_dataset

    def fake(name, config=None, split=None, streaming=False, **kw):
        if name == "json":
            return real(name, config, split=split, streaming=streaming, **kw)
        calls.append((name, config, split, streaming))
        return real("json", data_files=str(tmp_path / f"{split}.jsonl"), split="train", streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    cfg = DataConfig(hub_name="allenai/c4", hub_config="en", cache_dir=str(tmp_path / "c"), max_seq_len=32)
    folder, meta = build_or_load_cache(cfg, tokenizer, log=lambda *a: None)   # no cap: every document
    assert set(calls) == {("allenai/c4", "en", "train", True), ("allenai/c4", "en", "validation", True)}
    assert meta["train"]["documents"] == 120 and meta["valid"]["documents"] == 20
    cfg.max_train_docs, cfg.max_valid_docs = 100, 15
    folder, meta = build_or_load_cache(cfg, tokenizer, log=lambda *a: None)
    assert meta["train"]["documents"] == 100 and meta["valid"]["documents"] == 15


def test_train_tokenizer_cli(tmp_path):
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, str(root / "scripts" / "train_tokenizer.py"), str(SMALL), "--vocab-size", "300",
                        "--out", str(tmp_path / "wp")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "wp"))
    assert len(tok) == 300 and tok.mask_token == "[MASK]" and tok.tokenize("Hello World") == tok.tokenize("hello world")


def test_loader_position_is_its_state(tmp_path, tokenizer):
    from mosaic_bert.train.data import TrainLoader
    cfg = DataConfig(train_files=str(SMALL), cache_dir=str(tmp_path), max_seq_len=32)
    folder, _ = build_or_load_cache(cfg, tokenizer, log=lambda *a: None)
    split, masker = TokenizedSplit(folder, "train"), MLMMasker.from_tokenizer(tokenizer, 0.3, 0)
    plan = BatchPlan(3, 16, 8, accum=2)
    straight = TrainLoader(split, masker, plan, total_steps=5)
    steps = list(straight)
    assert [s for s, _ in steps] == list(range(5)) and all(len(m) == 2 for _, m in steps)
    assert straight.state_dict() == {"step": 5, "samples": 80}
    interrupted = TrainLoader(split, masker, plan, total_steps=5)
    it = iter(interrupted)
    next(it), next(it)
    resumed = TrainLoader(split, masker, plan, total_steps=5)
    resumed.load_state_dict(json.loads(json.dumps(interrupted.state_dict())))  # as a checkpoint stores it
    assert resumed.state_dict()["step"] == 2
    for (s1, m1), (s2, m2) in zip(steps[2:], resumed):
        assert s1 == s2 and all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(m1, m2))


@pytest.mark.parametrize("mode", ["truncate", "pack"])
def test_loader_layout_gives_the_same_loss_as_padded_batches(tmp_path, tokenizer, mode):
    """The fast path's loader adds the unpadding (bucketed sizes, labelled positions) to each microbatch: the model's
    loss and gradients on those inputs equal those on the plain padded batch (0/1 masks and packed document ids)."""
    import torch

    from mosaic_bert import BertConfig, BertForMaskedLM
    from mosaic_bert.train.data import TrainLoader
    from mosaic_bert.train.model import MosaicBertFamily
    cfg = DataConfig(train_files=str(SMALL), cache_dir=str(tmp_path), max_seq_len=32, mode=mode)
    folder, _ = build_or_load_cache(cfg, tokenizer, log=lambda *a: None)
    split, masker = TokenizedSplit(folder, "train"), MLMMasker.from_tokenizer(tokenizer, 0.3, 0)
    plan = BatchPlan(3, 8, 8)
    plain = [m[0] for _, m in TrainLoader(split, masker, plan, total_steps=2)]
    fast = [m[0] for _, m in TrainLoader(split, masker, plan, total_steps=2, layout=MosaicBertFamily.sync_free_layout)]
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0,
                                       alibi_starting_size=32)).eval()
    for a, b in zip(plain, fast, strict=True):
        assert {"indices", "cu_seq_lens_q", "max_length_q", "masked_positions"} <= set(b)
        assert b["indices"].shape[0] % 128 == 0 and b["masked_positions"].shape[0] % 64 == 0
        losses, grads = [], []
        for batch in (a, b):
            model.zero_grad()
            out = model(**batch)
            out.loss.backward()
            losses.append(out.loss.item())
            grads.append(model.bert.encoder.layer[0].attention.self.Wqkv.weight.grad.clone())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
        assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["truncate", "pack"])
def test_loader_workers_count_each_microbatch_as_the_loop_would(tmp_path, tokenizer, mode):
    """``stats``: the FLOP count's inputs come from the loader's worker processes with each microbatch (the loop then
    does no CPU tensor work for them), equal to the family's count on the batch itself (rows and packed documents)."""
    from mosaic_bert.train.data import TrainLoader
    from mosaic_bert.train.model import MosaicBertFamily
    cfg = DataConfig(train_files=str(SMALL), cache_dir=str(tmp_path), max_seq_len=32, mode=mode)
    folder, _ = build_or_load_cache(cfg, tokenizer, log=lambda *a: None)
    split, masker = TokenizedSplit(folder, "train"), MLMMasker.from_tokenizer(tokenizer, 0.3, 0)
    loader = TrainLoader(split, masker, BatchPlan(3, 16, 8, accum=2), total_steps=3, num_workers=2,
                         layout=MosaicBertFamily.sync_free_layout, stats=MosaicBertFamily.batch_stats)
    seen = 0
    for _, micro in loader:
        for m in micro:
            stats = m.pop("_flop_stats")
            assert tuple(stats) == MosaicBertFamily.batch_stats(m)
            assert stats[0] > 0 and stats[2] > 0
            seen += 1
    assert seen == 6


def test_packed_microbatch_round_trip_keeps_every_value_dtype_and_shape():
    import torch

    from mosaic_bert.train.data.loader import pack_microbatch, unpack_microbatch
    batch = {"input_ids": torch.arange(15).view(3, 5), "cu": torch.tensor([0, 2, 5], dtype=torch.int32),
             "keep": torch.tensor([True, False, True]), "scalar": torch.tensor(7.5), "none": torch.empty(0, 4),
             "max_length_q": 5, "_flop_stats": (9, 81, 3)}
    packed = pack_microbatch(dict(batch))
    assert sum(torch.is_tensor(v) for v in packed.values()) == 1   # one block to share, whatever the tensor count
    out = unpack_microbatch(packed)
    assert out.keys() == batch.keys()
    for k, v in batch.items():
        if torch.is_tensor(v):
            assert out[k].dtype == v.dtype and out[k].shape == v.shape and torch.equal(out[k], v), k
        else:
            assert out[k] == v


def test_loader_workers_give_the_same_microbatches_as_the_loop_itself(tmp_path, tokenizer):
    """With worker processes each microbatch travels packed; the loop sees exactly what it builds without workers."""
    import torch

    from mosaic_bert.train.data import TrainLoader
    from mosaic_bert.train.model import MosaicBertFamily
    cfg = DataConfig(train_files=str(SMALL), cache_dir=str(tmp_path), max_seq_len=32, mode="pack")
    folder, _ = build_or_load_cache(cfg, tokenizer, log=lambda *a: None)
    split, masker = TokenizedSplit(folder, "train"), MLMMasker.from_tokenizer(tokenizer, 0.3, 0)
    kw = dict(total_steps=3, layout=MosaicBertFamily.sync_free_layout, stats=MosaicBertFamily.batch_stats)
    here = [m for _, ms in TrainLoader(split, masker, BatchPlan(3, 16, 8, accum=2), **kw) for m in ms]
    there = [m for _, ms in TrainLoader(split, masker, BatchPlan(3, 16, 8, accum=2), num_workers=2, **kw) for m in ms]
    assert len(here) == len(there) == 6
    for a, b in zip(here, there):
        assert a.keys() == b.keys()
        for k in a:
            assert (torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype) if torch.is_tensor(a[k]) \
                else tuple(a[k]) == tuple(b[k]) if isinstance(a[k], (tuple, list)) else a[k] == b[k], k


def test_a_microbatch_is_packed_only_when_a_worker_process_makes_it(tmp_path, tokenizer):
    """One shared buffer per microbatch from a worker; plain tensors when the loop makes it itself."""
    import torch

    from mosaic_bert.train.data.loader import TrainMicrobatches
    cfg = DataConfig(train_files=str(SMALL), cache_dir=str(tmp_path), max_seq_len=32, mode="pack")
    folder, _ = build_or_load_cache(cfg, tokenizer, log=lambda *a: None)
    split, masker = TokenizedSplit(folder, "train"), MLMMasker.from_tokenizer(tokenizer, 0.3, 0)
    ds = TrainMicrobatches(split, masker, BatchPlan(3, 16, 8, accum=2), 0, 1)
    here = ds[0]
    assert "_packed" not in here and torch.is_tensor(here["input_ids"])
    there = next(iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1)))
    assert sum(torch.is_tensor(v) for v in there.values()) == 1 and there["_packed"].dtype == torch.uint8
