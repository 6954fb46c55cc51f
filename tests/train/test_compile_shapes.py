"""The compiled fast path (train.compile, the loader's bucketed layout) on rows of variable length: which input sizes
change from microbatch to microbatch, and how many graphs Dynamo compiles for them. Variable-length rows (truncate
mode) give several token and label buckets per run (chunk-mode rows of one length give one token bucket); every one
of them must run on the same compiled graph, with no recompile after the first microbatch."""

import collections
from pathlib import Path

import pytest
import torch

from mosaic_bert.train.model import MosaicBertFamily
from mosaic_bert.train.runtime import mark_dynamic_inputs

SMALL = Path(__file__).resolve().parents[1] / "fixtures" / "pretrain" / "pydocs_small.txt"


def variable_rows(n_batches, microbatch=16, seq=64, seed=0):
    """Padded MLM batches with row lengths 1..seq (30 % of the real tokens labelled), with their bucketed layout."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        lengths = torch.randint(1, seq + 1, (microbatch,), generator=g)
        am = (torch.arange(seq)[None] < lengths[:, None]).long()
        ids = torch.randint(5, 100, (microbatch, seq), generator=g) * am
        picked = (torch.rand(microbatch, seq, generator=g) < 0.3) & am.bool()
        batch = {"input_ids": ids, "attention_mask": am, "labels": torch.where(picked, ids, -100)}
        yield {**batch, **MosaicBertFamily.sync_free_layout(batch)}


def shape_signature(batch):
    """Every input's shape (or value, for Python ints), with the dims the adapter marks dynamic left out."""
    marked = set(MosaicBertFamily.dynamic_inputs)
    return tuple(sorted((k, tuple(v.shape[1:]) if k in marked else tuple(v.shape)) if torch.is_tensor(v) else (k, v)
                        for k, v in batch.items()))


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


def test_bucketed_inputs_vary_only_in_the_marked_dims():
    """The adapter's `dynamic_inputs` cover every size that changes between microbatches of one run (else Dynamo
    would specialise on the unmarked one and recompile per value, up to its recompile limit, then run eager)."""
    batches = list(variable_rows(40))
    buckets = collections.Counter(tuple(b[k].shape[0] for k in MosaicBertFamily.dynamic_inputs) for b in batches)
    assert len(buckets) >= 4, buckets   # the rows really do give several buckets
    assert len({shape_signature(b) for b in batches}) == 1


def test_mark_dynamic_inputs_one_graph_for_all_buckets(fresh_dynamo):
    """The model compiled as the trainer does, fed microbatches of different buckets with the marks: one graph."""
    from mosaic_bert import BertConfig, BertForMaskedLM
    cfg = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                     max_position_embeddings=64, alibi_starting_size=64, hidden_dropout_prob=0.1)
    model = BertForMaskedLM(cfg).train()
    forward = torch.compile(model)
    seen = set()
    for batch in variable_rows(6):
        seen.add((batch["indices"].shape[0], batch["masked_positions"].shape[0]))
        forward(**mark_dynamic_inputs(batch, MosaicBertFamily.dynamic_inputs), return_dict=True).loss.backward()
    assert len(seen) >= 3, seen
    assert fresh_dynamo["stats"]["unique_graphs"] == 1


def test_trainer_compiles_one_graph_on_variable_length_rows(tmp_path, fresh_dynamo):
    """The real Trainer (train.compile=true, truncate-mode rows of variable length, microbatch 8 x accumulation 2):
    one compiled graph over 16 microbatches of several buckets, none recompiled or broken."""
    from mosaic_bert.train.config import load_recipe
    from mosaic_bert.train.trainer import Trainer

    words = SMALL.read_text().split()
    docs = tmp_path / "docs.txt"   # blank-line-separated documents of 4 to 60 words: rows of many lengths
    docs.write_text("\n\n".join(" ".join(words[i * 7:i * 7 + 4 + (i * 13) % 57]) for i in range(240)) + "\n")
    args = [f"{k}={v}" for k, v in {
        "model.hidden_size": 32, "model.num_hidden_layers": 1, "model.num_attention_heads": 2,
        "model.intermediate_size": 64, "model.max_position_embeddings": 64, "model.alibi_starting_size": 64,
        "model.hidden_dropout_prob": 0.1, "tokenizer.vocab_size": 512, "data.train_files": docs,
        "data.max_seq_len": 48, "data.mode": "truncate", "data.num_workers": 0, "data.cache_dir": tmp_path / "cache",
        "data.valid_fraction": 0.1, "train.global_batch_size": 16, "train.microbatch_size": 8,
        "train.max_duration": "8ba", "train.compile": "true", "train.eval_samples": 0, "train.log_interval": 4,
        "train.checkpoint_interval": 8, "train.output_dir": tmp_path / "run", "train.trackers": "none",
        "train.fill_mask_example": "null"}.items()]
    trainer = Trainer(load_recipe(None, args))
    step_fn, buckets = trainer.train_step, set()

    def recording_step(step, microbatches):   # the sizes the loader's layout gave the trainer
        buckets.update((m["indices"].shape[0], m["masked_positions"].shape[0]) for m in microbatches)
        return step_fn(step, microbatches)

    trainer.train_step = recording_step
    trainer.fit()
    assert len(buckets) >= 3, buckets   # several buckets really arrived
    assert fresh_dynamo["stats"]["unique_graphs"] == 1, dict(fresh_dynamo["stats"])
    assert not fresh_dynamo["graph_break"], dict(fresh_dynamo["graph_break"])
