"""Bad input, one table (issue 16, "should fix"): every case must fail before anything runs or is written, with an
error of the tooling's family (`MosaicBertError`) whose message names the problem and the fix, instead of a library
traceback or silence (the model's own cases, ``MODEL_CASES``, raise ValueErrors: it imports nothing of the tooling).
``CASES`` is the count the issue's closing note reports; the end-to-end cases (a run with
eval_samples=0, --resume PATH into a new folder, ...) are in tests/test_faults.py and tests/train/test_pretrain.py."""

import os
import shutil
from pathlib import Path

import pytest

from mosaic_bert.errors import DataError, GlueDataError, ModelLoadError, MosaicBertError, RecipeError

ROOT = Path(__file__).resolve().parent.parent
GLUE = ROOT / "tests" / "fixtures" / "glue"


# ------------------------------------------------------------------------------------------------ recipes
def recipe(*overrides):
    def go(tmp_path):
        from mosaic_bert.train.config import load_recipe
        load_recipe(None, [o.replace("{tmp}", str(tmp_path)) for o in overrides])
    return go


def recipe_output_dir_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    recipe("train.output_dir={tmp}/f")(tmp_path)


RECIPE_CASES = [
    ("checkpoint_interval 0", recipe("train.checkpoint_interval=0"), ["train.checkpoint_interval", ">= 1"]),
    ("eval_interval 0", recipe("train.eval_interval=0"), ["train.eval_interval", ">= 1"]),
    ("log_interval 0", recipe("train.log_interval=0"), ["train.log_interval", ">= 1"]),
    ("max_duration 0", recipe("train.max_duration=0"), ["train.max_duration", "positive"]),
    ("max_duration 0ba", recipe("train.max_duration=0ba"), ["train.max_duration", "positive"]),
    ("lr abc", recipe("train.lr=abc"), ["train.lr", "number", "'abc'"]),
    ("lr negative", recipe("train.lr=-1e-4"), ["train.lr", "> 0"]),
    ("betas scalar", recipe("train.betas=0.9"), ["train.betas", "two numbers", "[0.9, 0.98]"]),
    ("betas out of range", recipe("train.betas=[0.9, 1.5]"), ["train.betas", "[0, 1)"]),
    ("eps abc", recipe("train.eps=abc"), ["train.eps", "number"]),
    ("microbatch abc", recipe("train.microbatch_size=abc"), ["train.microbatch_size", "integer"]),
    ("warmup negative", recipe("train.warmup=-0.1"), ["train.warmup", ">= 0"]),
    ("warmup abc", recipe("train.warmup=abc"), ["train.warmup", "500ba"]),
    ("weight_decay negative", recipe("train.weight_decay=-1"), ["train.weight_decay", ">= 0"]),
    ("eval_samples negative", recipe("train.eval_samples=-1"), ["train.eval_samples", ">= 0"]),
    ("mixed_precision fp8", recipe("train.mixed_precision=fp8"), ["train.mixed_precision", "bf16"]),
    ("compile maybe", recipe("train.compile=maybe"), ["train.compile", "true or false"]),
    ("output_dir is a file", recipe_output_dir_is_a_file, ["train.output_dir", "is a file"]),
    ("max_seq_len 0", recipe("data.max_seq_len=0"), ["data.max_seq_len", ">= 8"]),
    ("max_seq_len 2", recipe("data.max_seq_len=2"), ["data.max_seq_len", ">= 8"]),
    ("unknown data.format", recipe("data.format=xml"), ["data.format", "'xml'", "parquet"]),
    ("valid_fraction 1.5", recipe("data.valid_fraction=1.5"), ["data.valid_fraction", "[0, 1)"]),
    ("max_train_docs 0", recipe("data.max_train_docs=0"), ["data.max_train_docs", ">= 1"]),
    ("vocab_size 0", recipe("model.vocab_size=0"), ["model.vocab_size", ">= 1"]),
    ("hidden_size 0", recipe("model.hidden_size=0"), ["model.hidden_size", ">= 1"]),
    ("num_hidden_layers -1", recipe("model.num_hidden_layers=-1"), ["model.num_hidden_layers", ">= 1"]),
    ("heads do not divide hidden", recipe("model.hidden_size=100", "model.num_attention_heads=3"),
     ["model.hidden_size", "multiple of model.num_attention_heads"]),
    ("dropout 1.5", recipe("model.hidden_dropout_prob=1.5"), ["model.hidden_dropout_prob", "[0, 1)"]),
    ("hf positions < max_seq_len", recipe("model.family=hf", "model.max_position_embeddings=64"),
     ["data.max_seq_len", "model.max_position_embeddings"]),
    ("tokenizer vocab 5", recipe("tokenizer.vocab_size=5"), ["tokenizer.vocab_size", ">= 32"]),
]


# ------------------------------------------------------------------------------------------------ training data
def read_all(name: str, content: bytes, fmt="auto"):
    def go(tmp_path):
        from mosaic_bert.train.data import iter_documents_from_files
        p = tmp_path / name
        p.write_bytes(content)
        list(iter_documents_from_files([str(p)], fmt, "text"))
    return go


BINARY = bytes(range(256)) * 40
LATIN1 = ("Der Bär läuft über die Straße. " * 200).encode("latin-1")

DATA_CASES = [
    ("binary train file", read_all("weights.txt", BINARY), ["weights.txt", "binary", "data.train_files"]),
    ("binary .gz train file", lambda t: _gz(t, BINARY), ["corpus.txt.gz", "binary"]),
    ("latin-1 train file", read_all("latin1.txt", LATIN1), ["latin1.txt", "UTF-8", "undecodable"]),
]


def _gz(tmp_path, content):
    import gzip
    with gzip.open(tmp_path / "corpus.txt.gz", "wb") as f:
        f.write(content)
    from mosaic_bert.train.data import iter_documents_from_files
    list(iter_documents_from_files([str(tmp_path / "corpus.txt.gz")], "auto", "text"))


# ------------------------------------------------------------------------------------------------ GLUE
def glue_copy(tmp_path, task_dir: str, stem: str, content: bytes) -> Path:
    data = tmp_path / "glue"
    shutil.copytree(GLUE / task_dir, data / task_dir)
    (data / task_dir / f"{stem}.tsv").write_bytes(content)
    return data


def glue_read(task: str, task_dir: str, stem: str, content: bytes):
    def go(tmp_path):
        from mosaic_bert.glue.tasks import TASKS, read_glue_tsv, tsv_path
        data = glue_copy(tmp_path, task_dir, stem, content)
        read_glue_tsv(tsv_path(str(data), TASKS[task], stem), TASKS[task])
    return go


def glue_run(model: str, **kw):
    def go(tmp_path):
        from mosaic_bert.glue.finetune import run_glue
        run_glue(model.replace("{tmp}", str(tmp_path)), "rte", str(GLUE), str(tmp_path / "out"), **kw)
    return go


RTE_HEAD = b"index\tsentence1\tsentence2\tlabel\n"
STSB_HEAD = (GLUE / "STS-B" / "train.tsv").read_bytes().splitlines(keepends=True)[0]
STSB_ROW = (GLUE / "STS-B" / "train.tsv").read_bytes().splitlines(keepends=True)[1]

GLUE_CASES = [
    ("all dev rows malformed", glue_read("rte", "RTE", "dev", RTE_HEAD + b"0\tonly two\n1\tfields\n"),
     ["dev.tsv", "no usable rows", "tab-separated"]),
    ("header-only train", glue_read("rte", "RTE", "train", RTE_HEAD), ["train.tsv", "no data rows"]),
    ("STS-B score 42", glue_read("stsb", "STS-B", "train", STSB_HEAD + STSB_ROW + STSB_ROW.replace(b"5.000", b"42")),
     ["train.tsv", "line 3", "0 to 5", "42"]),
    ("non-UTF-8 line", glue_read("rte", "RTE", "train", RTE_HEAD + b"0\ta\tb\tentailment\n1\tcaf\xe9\tb\tentailment\n"),
     ["train.tsv", "line 3", "UTF-8"]),
    ("--epochs 0", glue_run("bert-base-uncased", epochs=0), ["--epochs", ">= 1"]),
    ("--max-train-samples 0", glue_run("bert-base-uncased", max_train_samples=0), ["--max-train-samples", ">= 1"]),
    ("missing model folder", glue_run("{tmp}/no-such-model"), ["no-such-model", "no such folder"]),
    ("model folder without config.json", glue_run("{tmp}"), ["no config.json"]),
]

CASES = RECIPE_CASES + DATA_CASES + GLUE_CASES


def _assert_clear_error(error, name, make, needles, tmp_path):
    """`make(tmp_path)` raises `error` whose message holds every one of `needles`."""
    with pytest.raises(error) as info:
        make(tmp_path)
    msg = str(info.value)
    for n in needles:
        assert n in msg, f"{name}: {n!r} not in the message:\n{msg}"


@pytest.mark.parametrize("name,make,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(name, make, needles, tmp_path):
    _assert_clear_error(MosaicBertError, name, make, needles, tmp_path)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "something was written"


def test_the_error_classes():
    """Recipe problems are RecipeErrors, data problems DataErrors, GLUE data GlueDataErrors, models ModelLoadErrors."""
    assert issubclass(GlueDataError, DataError) and issubclass(ModelLoadError, MosaicBertError)
    with pytest.raises(RecipeError):
        recipe("train.lr=abc")(None)


def test_a_few_undecodable_bytes_warn_with_the_count(tmp_path, caplog):
    from mosaic_bert.train.data import iter_documents_from_files
    p = tmp_path / "mostly.txt"
    p.write_bytes(b"plain text line\n" * 2000 + b"caf\xe9 au lait\n")
    docs = list(iter_documents_from_files([str(p)], "auto", "text"))
    assert len(docs) == 2001
    assert "mostly.txt" in caplog.text and "1 undecodable" in caplog.text, caplog.text


def test_one_huge_line_is_cut_before_tokenizing_in_truncate_mode(tmp_path, monkeypatch):
    """A 5 MB single-line document: truncate mode keeps only its first max_seq_len tokens, so the tokenizer must not
    see (and hold in memory) the whole line; the held-out error then says how many documents were read."""
    from mosaic_bert.train.data.store import tokenize_documents
    from mosaic_bert.train.tokenizer import train_wordpiece

    tok = train_wordpiece(["alpha beta gamma delta"] * 50, 64, str(tmp_path / "tok"))
    seen = []
    real_call = type(tok).__call__

    def spy(self, batch, **kw):
        seen.extend(len(d) for d in batch)
        return real_call(self, batch, **kw)

    monkeypatch.setattr(type(tok), "__call__", spy)
    arrays, n = tokenize_documents(["alpha beta " * 500_000], tok, 16, "truncate")
    assert n == 1 and arrays["ids"].shape == (1, 16) and max(seen) <= 16 * 128, max(seen)


# ------------------------------------------------------------------------------------------------ the model
# The model's own errors are ValueErrors (it imports nothing of the tooling); the same rule: the problem and the fix.
def model_call(**inputs):
    def go(tmp_path):
        import torch
        from conftest import tiny_config
        from mosaic_bert import BertForSequenceClassification
        torch.manual_seed(0)
        BertForSequenceClassification(tiny_config())(**{k: v() for k, v in inputs.items()})
    return go


def model_config(**fields):
    def go(tmp_path):
        from conftest import tiny_config
        tiny_config(**fields)
    return go


def damaged_weights(how: str):
    def go(tmp_path):
        from conftest import tiny_config
        from mosaic_bert import BertForMaskedLM
        BertForMaskedLM(tiny_config()).save_pretrained(tmp_path / "m")
        p = tmp_path / "m" / "model.safetensors"
        data = bytearray(p.read_bytes())
        if how == "lfs":
            data = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 97080\n"
        p.write_bytes(data[: len(data) // 2] if how.startswith("truncated") else
                      data if how == "lfs" else data[:8] + b"x" * 32 + data[40:])
        if how == "truncated, through remote code":
            from transformers import AutoModelForMaskedLM
            AutoModelForMaskedLM.from_pretrained(tmp_path / "m", trust_remote_code=True)
        BertForMaskedLM.from_pretrained(tmp_path / "m")
    return go


def _ids(dtype=None):
    import torch
    ids = torch.randint(1, 128, (2, 5))
    return ids if dtype is None else ids.to(dtype)


MODEL_CASES = [
    ("float input_ids", model_call(input_ids=lambda: _ids().float()), ["input_ids", "integer", "float32", ".long()"]),
    ("bool input_ids", model_call(input_ids=lambda: _ids().bool()), ["input_ids", "integer", "torch.bool"]),
    ("inputs_embeds of the wrong width",
     model_call(inputs_embeds=lambda: __import__("torch").randn(2, 5, 31)), ["inputs_embeds", "hidden_size=32",
                                                                            "(2, 5, 31)", "get_input_embeddings"]),
    ("inputs_embeds without a batch dimension",
     model_call(inputs_embeds=lambda: __import__("torch").randn(5, 32)), ["inputs_embeds", "(5, 32)", "[None]"]),
    ("zero-length rows (seqlen 0)", model_call(input_ids=lambda: _ids()[:, :0]), ["seqlen 0", "at least one token"]),
    ("config vocab_size 0", model_config(vocab_size=0), ["config.vocab_size", ">= 1", "got 0"]),
    ("config hidden_size 0", model_config(hidden_size=0), ["config.hidden_size", ">= 1"]),
    ("config num_hidden_layers -1", model_config(num_hidden_layers=-1), ["config.num_hidden_layers", ">= 1", "-1"]),
    ("config heads do not divide hidden", model_config(hidden_size=30, num_attention_heads=4),
     ["config.hidden_size (30)", "multiple of config.num_attention_heads (4)"]),
    ("truncated safetensors", damaged_weights("truncated"), ["model.safetensors", "truncated", "again"]),
    ("truncated safetensors, remote code", damaged_weights("truncated, through remote code"),
     ["model.safetensors", "truncated", "again"]),
    ("overwritten safetensors header", damaged_weights("header"), ["model.safetensors", "damaged header", "again"]),
    ("Git LFS pointer for weights", damaged_weights("lfs"), ["model.safetensors", "Git LFS pointer", "git lfs pull"]),
]


@pytest.mark.parametrize("name,make,needles", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_model_input_is_a_clear_error(name, make, needles, tmp_path):
    _assert_clear_error(ValueError, name, make, needles, tmp_path)


def test_integer_ids_of_any_dtype_give_the_int64_outputs():
    import torch
    from conftest import tiny_config
    from mosaic_bert import BertModel
    model = BertModel(tiny_config()).eval()
    ids = _ids()
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state
        for dtype in (torch.int16, torch.int32, torch.uint8, torch.int8):
            assert torch.equal(model(input_ids=ids.to(dtype)).last_hidden_state, want), dtype


def test_an_empty_sequence_in_a_padding_free_batch_pools_like_an_all_padding_row():
    """Issue 16: a zero-length sequence crashed the pooler (IndexError when last) or, in the middle, silently pooled
    the next sequence's first token. It now pools zeros, as an all-padding row of a padded batch does."""
    import torch
    from conftest import perturb_, tiny_config
    from mosaic_bert import BertForSequenceClassification
    model = perturb_(BertForSequenceClassification(tiny_config(num_labels=3))).eval()
    a, b = torch.randint(1, 128, (4,)), torch.randint(1, 128, (3,))
    padded = torch.zeros(3, 4, dtype=torch.long)
    padded[0], padded[2, :3] = a, b
    with torch.no_grad():
        want = model(input_ids=padded, attention_mask=padded.ne(0).long()).logits  # row 1: all padding
        for cu in ([0, 4, 4, 7], [0, 4, 7, 7]):  # empty in the middle, empty at the end
            got = model(input_ids=torch.cat([a, b])[None], cu_seq_lens_q=torch.tensor(cu, dtype=torch.int32),
                        max_length_q=4).logits
            order = [0, 1, 2] if cu[2] == 4 else [0, 2, 1]
            assert torch.allclose(got, want[order], atol=1e-5), cu


def test_a_folder_without_its_model_code_is_named_by_the_glue_loader(tmp_path):
    """A missing remote-code file fails inside transformers before the model's code runs (an OSError pointing at a
    Hub URL built from the local path), so only the tooling can say more: the GLUE loader's ModelLoadError names the
    missing file (asked with --trust-remote-code; without it the loader asks for that flag first)."""
    from conftest import tiny_config
    from mosaic_bert import BertForSequenceClassification
    from mosaic_bert.glue.finetune import load_model
    from mosaic_bert.glue.tasks import TASKS
    BertForSequenceClassification(tiny_config()).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "modeling_bert.py").unlink()
    with pytest.raises(ModelLoadError, match="modeling_bert.py"):
        load_model(str(tmp_path / "m"), TASKS["rte"], trust_remote_code=True)
