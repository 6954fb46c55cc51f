"""Model card and upload (offline: --local-target copies exactly what would be uploaded)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mosaic_bert.errors import ExportError
from mosaic_bert.train.export import files_to_publish, push_folder, write_model_card
from mosaic_bert.train.config import load_recipe

ROOT = Path(__file__).resolve().parents[2]


def fake_run_folder(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "step_0000010").mkdir(parents=True)
    (out / "checkpoints" / "step_0000010" / "model.safetensors").write_bytes(b"x")
    (out / "model.safetensors").write_bytes(b"weights")
    (out / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (out / "modeling_bert.py").write_text("# code")
    (out / "metrics.jsonl").write_text("")
    (out / "runs").mkdir()
    (out / "runs" / "events.out.tfevents.1").write_text("x")
    return out


def test_model_card(tmp_path):
    r = load_recipe(None)
    recs = [{"step": 0, "eval_loss": 8.3, "eval_accuracy": 0.0}, {"step": 10, "loss": 6.0, "tokens_per_s": 1000.0},
            {"step": 10, "eval_loss": 5.5, "eval_accuracy": 0.2}]
    summary = {"steps": 10, "first_eval": recs[0], "last_eval": recs[2], "params": 3.2e6, "samples_seen": 320,
               "tokens_seen": 20000, "data": {"train": {"rows": 100, "tokens": 6000}}}
    text = write_model_card(tmp_path, r, summary, recs).read_text()
    assert "trust_remote_code=True" in text and "| step 10 | 5.5000 | 0.2000 |" in text
    assert "Python documentation" in text and "pipeline_tag: fill-mask" in text


def test_push_to_local_target(tmp_path):
    out = fake_run_folder(tmp_path)
    names = sorted(str(p.relative_to(out)) for p in files_to_publish(out))
    assert names == ["config.json", "metrics.jsonl", "model.safetensors", "modeling_bert.py"]
    dest = push_folder(out, "me/model", revision="v1", local_target=str(tmp_path / "export"))
    assert Path(dest) == tmp_path / "export" / "v1"
    assert sorted(p.name for p in Path(dest).iterdir()) == [".upload.json", "config.json", "metrics.jsonl",
                                                            "model.safetensors", "modeling_bert.py"]
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "push_to_hub.py"), str(out), "me/model", "--private",
                        "--local-target", str(tmp_path / "e2")], capture_output=True, text=True)
    assert p.returncode == 0 and json.loads((tmp_path / "e2" / ".upload.json").read_text())["private"] is True


def test_push_refuses_non_model_folder(tmp_path):
    with pytest.raises(ExportError, match="not a model folder"):
        push_folder(tmp_path, "me/x", local_target=str(tmp_path / "o"))


def test_exported_files_hold_no_local_paths(tmp_path):
    """recipe.json and the model card of a finished folder are published: no absolute path of this machine in them
    (data files by name, no cache folder, the output folder by name)."""
    from mosaic_bert.train.export import export_run

    class Saves:
        def save_pretrained(self, folder, **kw):
            (Path(folder) / "config.json").write_text("{}")

    home_data = Path.home() / "corpora" / "mine.txt"
    r = load_recipe(None, [f"data.train_files=[{tmp_path / 'a.txt'}, {home_data}]", f"data.valid_files={tmp_path}/v.txt",
                           f"data.cache_dir={tmp_path / 'cache'}", f"train.output_dir={tmp_path / 'out'}",
                           f"tokenizer.name_or_path={tmp_path / 'tok'}"])
    out = tmp_path / "out"
    out.mkdir()
    export_run(out, Saves(), Saves(), r, {"steps": 1, "data": {}}, [])
    for f in ("recipe.json", "README.md"):
        text = (out / f).read_text()
        assert str(tmp_path) not in text and str(Path.home()) not in text, (f, text[:3000])
    rec = json.loads((out / "recipe.json").read_text())
    assert rec["data"]["train_files"] == ["a.txt", "mine.txt"] and rec["data"]["cache_dir"] is None
    assert rec["train"]["output_dir"] == "out" and rec["tokenizer"]["name_or_path"] == "tok"


def test_push_refuses_files_with_local_paths(tmp_path):
    out = fake_run_folder(tmp_path)
    (out / "recipe.json").write_text(json.dumps({"data": {"train_files": str(tmp_path / "secret" / "corpus.txt")}}))
    with pytest.raises(ExportError, match="recipe.json.*local path"):
        push_folder(out, "me/model", local_target=str(tmp_path / "export"))


def test_exported_tokenizer_truncates_at_the_models_length(tmp_path):
    """A trained WordPiece vocabulary carries no length (model_max_length 1e30, so `truncation=True` did nothing):
    the exported tokenizer declares the model's length (ALiBi's alibi_starting_size; HF BERT's positions)."""
    from transformers import AutoTokenizer, BertConfig as HFBertConfig

    from mosaic_bert import BertConfig, BertForMaskedLM
    from mosaic_bert.train.export import declared_max_length, export_run

    tok = AutoTokenizer.from_pretrained(str(ROOT / "tests" / "fixtures" / "bert-base-uncased"))
    tok.model_max_length = int(1e30)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, alibi_starting_size=96))
    out = tmp_path / "out"
    out.mkdir()
    export_run(out, model, tok, load_recipe(None), {"steps": 1, "data": {}}, [])
    saved = AutoTokenizer.from_pretrained(str(out))
    assert saved.model_max_length == 96
    assert len(saved("word " * 500, truncation=True)["input_ids"]) == 96
    assert declared_max_length(HFBertConfig(max_position_embeddings=512)) == 512
