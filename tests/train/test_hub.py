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
