"""data.streaming=true end to end (issue 11): scripts/pretrain.py trains on local files read as a stream (no
conversion, nothing tokenized into the cache), a kill -9 + --resume gives the losses of a straight run, and the
recipe refuses what streaming cannot do, saying what to set. Tiny model, 400 documents, on CPU."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pretrain import SMALL, losses, run, run_with_kill_at, tiny_args  # noqa: E402

from mosaic_bert.errors import DataError, RecipeError
from mosaic_bert.train.config import load_recipe


@pytest.fixture(scope="module")
def stream_files(tmp_path_factory):
    """Two jsonl train files (one per rank's share when split) and a blank-line text file of held-out documents."""
    from mosaic_bert.train.data.sources import iter_documents_from_files
    base = tmp_path_factory.mktemp("stream")
    docs = list(iter_documents_from_files([str(SMALL)], "auto", "text"))
    train, valid = docs[:360], docs[360:]
    for j in range(2):
        (base / f"part-{j}.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in train[j::2]))
    (base / "valid.txt").write_text("\n\n".join(valid) + "\n")
    return base, train, valid


def stream_args(base, out, **extra):
    return tiny_args(out, base / "cache", **{"data.streaming": "true", "data.train_files": str(base / "part-*.jsonl"),
                                              "data.valid_files": str(base / "valid.txt"), "data.text_column": "body",
                                              "train.max_duration": "8ba", "train.eval_interval": 4, **extra})


@pytest.fixture(scope="module")
def straight(stream_files):
    base = stream_files[0]
    p = run(stream_args(base, base / "straight"))
    return base, base / "straight", p


def test_streaming_run_trains_evaluates_and_exports(straight, stream_files):
    base, out, p = straight
    tr, ev = losses(out)
    assert [s for s, _ in tr] == list(range(1, 9)) and [s for s, _ in ev] == [0, 4, 8]
    assert "streamed train rows" in p.stdout
    assert f"{len(stream_files[2])} held-out rows from {len(stream_files[2])} documents" in p.stdout
    assert not (base / "cache" / "tokenized").exists() and not list((base / "cache").glob("tok-*"))   # no conversion
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    state = json.loads((out / "checkpoints" / "step_0000008" / "trainer_state.json").read_text())
    assert state["loader"]["examples"] == 64 and state["loader"]["world"] == 1   # 8 steps x 8 documents read
    assert state["loader"]["rank_examples"] == [64]


def test_streaming_kill_9_and_resume_is_exact(straight):
    base, out, _ = straight
    out2 = base / "killed"
    p = run_with_kill_at(6, stream_args(base, out2))
    assert p.returncode == -9, p.stderr[-2000:]          # killed after step 6, the step-4 checkpoint on disk
    assert [c.name for c in (out2 / "checkpoints").iterdir() if c.name.startswith("step_")] == ["step_0000004"]
    run(stream_args(base, out2), resume="latest")
    (tr1, ev1), (tr2, ev2) = losses(out), losses(out2)
    assert [s for s, _ in tr2] == [s for s, _ in tr1] == list(range(1, 9))
    assert [s for s, _ in ev2] == [s for s, _ in ev1] == [0, 4, 8]
    for (s1, a), (s2, b) in zip(tr1 + ev1, tr2 + ev2, strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-6, abs=1e-6), (s1, a, b)


def test_streaming_run_ends_with_its_data(stream_files):
    """One pass: 360 documents = 45 steps of 8; a run asking for 100 steps stops after 45 and exports (tokenized in
    one DataLoader worker, without evaluation)."""
    base = stream_files[0]
    out = base / "short"
    p = run(stream_args(base, out, **{"train.max_duration": "100ba", "train.eval_samples": 0, "data.num_workers": 1,
                                      "train.checkpoint_interval": 1000, "data.valid_files": None}))
    tr, ev = losses(out)
    assert [s for s, _ in tr] == list(range(1, 46)) and ev == [] and (out / "model.safetensors").exists()
    assert "the train data ended after step 45 of 100" in p.stdout


@pytest.mark.parametrize("extra,needle", [
    ({"data.mode": "pack"}, "set data.mode=truncate"),
    ({"data.train_files": None}, "needs data.train_files .local files. or data.hub_name"),
    ({"data.num_workers": 2}, "set data.num_workers to 0 or 1"),
    ({"data.max_train_docs": 100}, "set data.max_train_docs=null"),
    ({"train.max_duration": "1e6tok"}, "give steps"),
    ({"data.valid_files": None}, "set data.valid_files to held-out files, or train.eval_samples=0"),
])
def test_streaming_refusals(extra, needle):
    args = {"data.streaming": "true", "data.train_files": str(SMALL), "data.valid_files": str(SMALL), **extra}
    with pytest.raises(RecipeError, match=needle):
        load_recipe(None, [f"{k}={'null' if v is None else v}" for k, v in args.items()])
    args["data.streaming"] = "false"
    if "data.mode" not in extra and "train.max_duration" not in extra and "data.num_workers" not in extra:
        load_recipe(None, [f"{k}={'null' if v is None else v}" for k, v in args.items()])   # fine without streaming


def test_streaming_refuses_a_converted_folder(tmp_path):
    from mosaic_bert.train.data import build_data
    from mosaic_bert.train.data.convert import FORMAT
    (tmp_path / "manifest.json").write_text(json.dumps({"format": FORMAT}))
    r = load_recipe(None, ["data.streaming=true", f"data.train_files={tmp_path}", "train.eval_samples=0"])

    class Acc:
        is_main_process = True
    with pytest.raises(DataError, match="set data.streaming=false"):
        build_data(r.data, r.tokenizer, Acc(), log=lambda *a: None)


def test_streaming_from_a_hub_dataset(tmp_path, stream_files, monkeypatch):
    """data.hub_name with data.streaming=true (a local stand-in for the Hub): the train split is read in its order
    by the loader, the held-out rows are data.hub_valid_split capped at data.max_valid_docs, nothing is converted."""
    import datasets
    import torch

    from mosaic_bert.train.data import BatchPlan, StreamingTrainLoader, build_data
    from mosaic_bert.train.masking import MLMMasker
    base, train, valid = stream_files
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in train))
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in valid))
    real = datasets.load_dataset

    def fake(name, config=None, split=None, streaming=False, **kw):
        assert name == "allenai/c4" and streaming, (name, streaming)
        return real("json", data_files=str(tmp_path / f"{split}.jsonl"), split="train", streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    bert = Path(__file__).resolve().parents[1] / "fixtures" / "bert-base-uncased"
    r = load_recipe(None, ["data.streaming=true", "data.hub_name=allenai/c4", "data.hub_config=en",
                           "data.max_valid_docs=15", "data.max_seq_len=32", f"data.cache_dir={tmp_path / 'cache'}",
                           f"tokenizer.name_or_path={bert}"])

    class Acc:
        is_main_process = True

        def main_process_first(self):
            import contextlib
            return contextlib.nullcontext()
    data = build_data(r.data, r.tokenizer, Acc(), log=lambda *a: None)
    assert data.train is None and len(data.valid) == 15 and not (tmp_path / "cache").exists()
    tok = data.tokenizer
    loader = StreamingTrainLoader(data.stream, tok, MLMMasker.from_tokenizer(tok, 0.3, 0), BatchPlan(1, 8, 8), 2,
                                  seq_len=32, num_workers=0)
    rows = []
    for _, (m,) in loader:
        orig = torch.where(m["labels"] != -100, m["labels"], m["input_ids"])
        rows += [r_[r_ != tok.pad_token_id].tolist() for r_ in orig]
    want = tok(train[:16], add_special_tokens=False, truncation=True, max_length=30)["input_ids"]
    assert rows == [[tok.cls_token_id] + w + [tok.sep_token_id] for w in want]
    assert loader.state_dict()["examples"] == 16
    # from the worker process a microbatch travels packed (one buffer, with its FLOP-count inputs): the loop sees
    # exactly what it builds itself
    from mosaic_bert.train.model import MosaicBertFamily
    kw = dict(seq_len=32, layout=MosaicBertFamily.sync_free_layout, stats=MosaicBertFamily.batch_stats)
    here, there = ([m for _, ms in StreamingTrainLoader(data.stream, tok, MLMMasker.from_tokenizer(tok, 0.3, 0),
                                                        BatchPlan(1, 8, 8), 2, num_workers=w, **kw) for m in ms]
                   for w in (0, 1))
    assert len(here) == len(there) == 2
    for a, b in zip(here, there):
        assert a.keys() == b.keys() and tuple(a["_flop_stats"]) == tuple(b["_flop_stats"])
        assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))


def test_streamed_compiled_fast_path_matches_eager(straight):
    """data.streaming=true with train.compile=true: the streamed microbatches carry the bucketed layout (as the
    converted loader's) and the compiled model trains the same as the eager padded path (no dropout)."""
    base, _, _ = straight
    common = {"model.hidden_dropout_prob": 0.0, "train.max_duration": "4ba", "train.eval_interval": 4,
              "train.checkpoint_interval": 4}
    eager, compiled = base / "s-eager-nodrop", base / "s-compiled-nodrop"
    run(stream_args(base, eager, **common, **{"train.compile": "false"}))
    p = run(stream_args(base, compiled, **common, **{"train.compile": "true"}))
    (tr1, ev1), (tr2, ev2) = losses(eager), losses(compiled)
    assert "device cpu, compiled, sync-free bucketed inputs" in p.stdout
    assert len(tr2) == len(tr1) == 4 and len(ev2) == len(ev1) == 2, p.stdout[-2000:]
    for (s1, a), (s2, b) in zip(tr1 + ev1, tr2 + ev2, strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-4, abs=1e-4), (s1, a, b)
