"""data.streaming=true on two real CPU processes (gloo, `accelerate launch --multi_gpu`, as test_pretrain's
test_two_processes_match_one): each rank reads its own file of the stream (split_dataset_by_node) through a DataLoader
worker, the run evaluates and ends with its data on both ranks at the same step, and a hard stop + --resume trains on
exactly the rows and losses of the straight run. The two files are of unequal length and hold, in unequal numbers,
records that make no row (a control character: not blank, so read as a document, but no token), so the ranks' stream
positions (examples read) differ at a checkpoint, as with a Hub dataset's empty records. Tiny model, 3 two-process
runs, ~35-50 s on 2 cores.

Also in process (cheap): two ranks of one file read every other example, and with a layout function (the compiled
fast path) a streamed microbatch carries the bucketed unpadding of its own mask."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pretrain import SMALL, accelerate_launcher, losses, run_group, tiny_args  # noqa: E402

# Rank r of 2 reads part-r: 40 documents (10 steps of 4 rows) and 52 (13 steps), so the stream ends for rank 0 first.
DOCS, ROWLESS_EVERY = (40, 52), (9, 4)

# The Trainer as scripts/pretrain.py builds it, plus two test hooks.
DRIVER = """
import json, os, sys
import torch
from mosaic_bert.train.config import load_recipe
from mosaic_bert.train.state import Callback
from mosaic_bert.train.trainer import Trainer

stop_at, resume, args = int(sys.argv[1]), sys.argv[2] == "resume", sys.argv[3:]


class HardStop(Callback):   # every rank ends abruptly after step N, as under kill -9: nothing flushed or saved
    def on_step_end(self, trainer):
        if trainer.state.step == stop_at:
            sys.stdout.flush()
            os._exit(0)     # status 0: the launcher reports success, the run folder is what a kill leaves


t = Trainer(load_recipe(None, args), resume="latest" if resume else None, callbacks=[HardStop()])
log = open(os.path.join(t.recipe.train.output_dir, f"rows-rank{t.acc.process_index}.jsonl"), "a")
train_step = t.train_step


def recording(step, micro):   # the unmasked rows each rank trains on, step by step
    rows = []
    for m in micro:
        orig = torch.where(m["labels"] != -100, m["labels"], m["input_ids"])
        rows += [r[a > 0].tolist() for r, a in zip(orig, m["attention_mask"])]
    log.write(json.dumps({"step": step, "rows": rows}) + "\\n")
    log.flush()
    return train_step(step, micro)


t.train_step = recording
t.fit()
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """part-0/part-1.jsonl (documents with rowless records between them) and held-out documents."""
    from mosaic_bert.train.data.sources import iter_documents_from_files
    base = tmp_path_factory.mktemp("stream2")
    docs = list(iter_documents_from_files([str(SMALL)], "auto", "text"))
    parts = [docs[:DOCS[0]], docs[DOCS[0]:DOCS[0] + DOCS[1]]]
    for r, part in enumerate(parts):
        recs = []
        for i, d in enumerate(part):
            recs += [{"body": "\u0007"}] * (i % ROWLESS_EVERY[r] == 1) + [{"body": d}]
        (base / f"part-{r}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
    (base / "valid.txt").write_text("\n\n".join(docs[300:340]) + "\n")
    (base / "driver.py").write_text(DRIVER)
    return base, parts


def launch(base, out, stop_at=0, resume=False):
    args = tiny_args(out, base / "cache", **{
        "data.streaming": "true", "data.train_files": str(base / "part-*.jsonl"), "data.text_column": "body",
        "data.valid_files": str(base / "valid.txt"), "data.num_workers": 1, "train.max_duration": "100ba",
        "train.eval_interval": 4, "train.checkpoint_interval": 4})
    driver = str(base / "driver.py")   # a path unique to this test's temporary folder: the ranks' marker
    return run_group([str(stop_at), str(resume and "resume")] + args,
                     accelerate_launcher("--multi_gpu", "--num_processes", "2"), timeout=180, script=driver)


def rank_rows(out, rank):
    """{step: rows} of one rank; a resumed run's records replace the stopped run's for the same step."""
    return {r["step"]: r["rows"] for r in map(json.loads, (out / f"rows-rank{rank}.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def straight(files):
    base, _ = files
    p = launch(base, base / "straight")
    return base / "straight", p


def test_two_ranks_read_their_own_files_and_end_together(files, straight):
    from transformers import AutoTokenizer
    (base, parts), (out, p) = files, straight
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2 and "x accumulation 1 x 2 process(es)" in p.stdout, p.stdout[-2000:]
    assert "the train data ended after step 10 of 100" in p.stdout     # rank 0's 40 rows; rank 1 stops with it
    tr, ev = losses(out)
    assert [s for s, _ in tr] == list(range(1, 11)) and [s for s, _ in ev] == [0, 4, 8]
    assert ev[-1][1] < ev[0][1] and (out / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(out)
    for r in (0, 1):   # rank r trained on part-r's documents in order, 4 a step: the ranks' shares are disjoint
        want = tok(parts[r][:40], add_special_tokens=False, truncation=True, max_length=46)["input_ids"]
        got = rank_rows(out, r)
        assert sorted(got) == list(range(10))
        assert [row for s in range(10) for row in got[s]] == [[tok.cls_token_id] + w + [tok.sep_token_id] for w in want]


def test_two_ranks_hard_stop_and_resume_is_exact(files, straight):
    """Stopped after step 6 (the step-4 checkpoint on disk), resumed: the same rows on each rank at every step and the
    same losses as the straight run. At step 4 rank 1 has read more records than rank 0 (more rowless ones)."""
    (base, _), (out, _) = files, straight
    out2 = base / "stopped"
    launch(base, out2, stop_at=6)
    assert [c.name for c in (out2 / "checkpoints").iterdir() if c.name.startswith("step_")] == ["step_0000004"]
    assert not (out2 / "model.safetensors").exists()
    state = json.loads((out2 / "checkpoints" / "step_0000004" / "trainer_state.json").read_text())["loader"]
    assert state["rank_examples"] == [18, 20], state   # 16 documents + 2 (rank 0) or 4 (rank 1) rowless records
    launch(base, out2, resume=True)
    for r in (0, 1):
        assert rank_rows(out2, r) == rank_rows(out, r)
    (tr1, ev1), (tr2, ev2) = losses(out), losses(out2)
    assert [s for s, _ in tr2] == [s for s, _ in tr1] == list(range(1, 11))
    assert [s for s, _ in ev2] == [s for s, _ in ev1] == [0, 4, 8]
    for (s1, a), (s2, b) in zip(tr1 + ev1, tr2 + ev2, strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-6, abs=1e-6), (s1, a, b)


def _loader(stream, rank=0, world=1, **kw):
    from transformers import AutoTokenizer

    from mosaic_bert.train.data import BatchPlan, StreamingTrainLoader
    from mosaic_bert.train.masking import MLMMasker
    tok = AutoTokenizer.from_pretrained(Path(__file__).resolve().parents[1] / "fixtures" / "bert-base-uncased")
    plan = BatchPlan(0, 4 * world, 4, 1, world, rank)
    return tok, StreamingTrainLoader(stream, tok, MLMMasker.from_tokenizer(tok, 0.3, 0), plan, 3, seq_len=32,
                                     text_column="body", num_workers=0, **kw)


def _rows(tok, loader):
    import torch
    rows = []
    for _, (m,) in loader:
        orig = torch.where(m["labels"] != -100, m["labels"], m["input_ids"])
        rows += [r[a > 0].tolist() for r, a in zip(orig, m["attention_mask"])]
    return rows


def test_two_ranks_of_one_file_read_every_other_document(files, tmp_path):
    """One data file (split_dataset_by_node cannot give whole files to 2 ranks): rank r reads documents r, r+2, ...;
    a rank resumed from its own position in the state (rank_examples) reads on exactly."""
    from mosaic_bert.train.config import load_recipe
    from mosaic_bert.train.data.streaming import recipe_stream
    base, parts = files
    stream = recipe_stream(load_recipe(None, [f"data.train_files={base / 'part-1.jsonl'}", "data.text_column=body",
                                              "train.eval_samples=0"]).data)
    records = [json.loads(x)["body"] for x in (base / "part-1.jsonl").read_text().splitlines()]
    for r in (0, 1):
        tok, loader = _loader(stream, r, 2)
        want = [[tok.cls_token_id] + w + [tok.sep_token_id] for w in
                tok(records[r::2], add_special_tokens=False, truncation=True, max_length=30)["input_ids"] if w]
        assert _rows(tok, loader) == want[:12]
        state = loader.state_dict()
        assert state["rank_examples"][r] == state["examples"] and state["rank_examples"][1 - r] is None
        tok, resumed = _loader(stream, r, 2)
        resumed.total_steps = 5
        resumed.load_state_dict({**state, "step": 3})
        assert _rows(tok, resumed) == want[12:20]


def test_streamed_microbatch_carries_the_bucketed_layout(files):
    """With a layout (the compiled fast path, as the converted loader's): full-width rows, and the layout is
    bert_padding.bucketed_layout of the microbatch's own mask and labels."""
    import torch

    from mosaic_bert.modeling.bert_padding import bucketed_layout
    from mosaic_bert.train.data.streaming import recipe_stream
    from mosaic_bert.train.config import load_recipe
    from mosaic_bert.train.model import MosaicBertFamily
    base, _ = files
    stream = recipe_stream(load_recipe(None, [f"data.train_files={base / 'part-0.jsonl'}", "data.text_column=body",
                                              "train.eval_samples=0"]).data)
    _, plain = _loader(stream)
    _, laid = _loader(stream, layout=MosaicBertFamily.sync_free_layout)
    for (s1, (a,)), (s2, (b,)) in zip(plain, laid, strict=True):
        assert s1 == s2 and b["input_ids"].shape[1] == 32
        want = bucketed_layout(b["attention_mask"], b["labels"])
        assert set(want) <= set(b) and not any(k.startswith("_") for k in b)
        for k, v in want.items():
            assert torch.equal(b[k], v) if torch.is_tensor(v) else b[k] == v, k
        w = a["input_ids"].shape[1]   # the same rows and masks as without a layout, padded to the full width
        assert torch.equal(b["input_ids"][:, :w], a["input_ids"]) and not b["attention_mask"][:, w:].any()


def test_a_checkpoint_without_every_ranks_position_is_refused_on_two_ranks_and_loads_on_one(files):
    """An older streamed checkpoint holds only rank 0's count (`examples`): on 2 processes rank 1's position is
    unknown, so resuming is refused with the reason; on 1 process the count is this rank's and it resumes."""
    from mosaic_bert.errors import DataError
    from mosaic_bert.train.config import load_recipe
    from mosaic_bert.train.data.streaming import recipe_stream
    base, _ = files
    stream = recipe_stream(load_recipe(None, [f"data.train_files={base / 'part-1.jsonl'}", "data.text_column=body",
                                              "train.eval_samples=0"]).data)
    old = {"step": 2, "samples": 16, "examples": 9, "world": 2}
    _, rank1 = _loader(stream, 1, 2)
    with pytest.raises(DataError, match="does not hold rank 1's stream position.*cannot be resumed on 2 processes"):
        rank1.load_state_dict(old)
    _, single = _loader(stream)
    single.load_state_dict({**old, "samples": 8, "world": 1})
    assert (single.step, single.examples) == (2, 9)
