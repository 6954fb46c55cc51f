"""A saved folder works as transformers remote code in a fresh process where `mosaic_bert` cannot be imported; it
carries its own model_type, so transformers refuses it without remote code; saving is silent and re-ties weights."""

import ast
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import transformers
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

from conftest import BERT_TOKENIZER, ORIGINAL_TINY, perturb_, tiny_config
from mosaic_bert import BertConfig, BertForMaskedLM, BertForSequenceClassification
from mosaic_bert.modeling import __file__ as MODELING_INIT

SHIPPED = ("configuration_bert.py", "modeling_bert.py", "bert_padding.py", "flash_attn_triton.py")
ALLOWED_TOP_LEVEL = {"torch", "transformers", "triton", "flash_attn",
                     "functools", "json", "math", "os", "sys", "typing"}

CHILD = textwrap.dedent(
    r"""
    import json, sys, warnings
    sys.modules["mosaic_bert"] = None  # the package is not importable: only the folder's code may be used
    import torch
    from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForMultipleChoice,
                              AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, AutoTokenizer, BertConfig, pipeline)

    mlm_dir, cls_dir = sys.argv[1], sys.argv[2]
    exp = torch.load(f"{mlm_dir}/expected.pt")
    report = {}
    cfg = AutoConfig.from_pretrained(mlm_dir, trust_remote_code=True)
    report["config_class"] = f"{type(cfg).__module__}.{type(cfg).__name__}"
    mlm = AutoModelForMaskedLM.from_pretrained(mlm_dir, trust_remote_code=True).eval()
    enc = AutoModel.from_pretrained(mlm_dir, trust_remote_code=True).eval()
    cls = AutoModelForSequenceClassification.from_pretrained(cls_dir, trust_remote_code=True).eval()
    report["model_module"] = type(mlm).__module__
    with torch.no_grad():
        report["mlm"] = (mlm(**exp["inputs"]).logits - exp["mlm"]).abs().max().item()
        report["enc"] = (enc(**exp["inputs"]).last_hidden_state - exp["enc"]).abs().max().item()
        report["cls"] = (cls(**exp["inputs"]).logits - exp["cls"]).abs().max().item()

    # The model card, verbatim apart from the path: a stock BertConfig, then longer ALiBi.
    config = BertConfig.from_pretrained(mlm_dir)
    config.alibi_starting_size = 1024
    card = AutoModelForMaskedLM.from_pretrained(mlm_dir, config=config, trust_remote_code=True).eval()
    ids = torch.randint(1000, 2000, (1, 1024))
    with torch.no_grad():
        long_logits = card(input_ids=ids).logits
    report["long_shape"] = list(long_logits.shape)
    report["card_config"] = [type(card.config).__name__, card.config.model_type, card.config.alibi_starting_size]
    report["heads"] = [type(auto.from_pretrained(mlm_dir, trust_remote_code=True)).__name__ for auto in (
        AutoModelForTokenClassification, AutoModelForQuestionAnswering, AutoModelForMultipleChoice)]
    report["long_finite"] = bool(torch.isfinite(long_logits).all())

    # the attention op is registered by the folder's code, and the loaded model exports
    report["op_registered"] = hasattr(torch.ops.mosaic_bert, "varlen_alibi_attn_fwd_v1")
    program = torch.export.export(cls, (), dict(exp["inputs"]))
    with torch.no_grad():
        report["export"] = (program.module()(**exp["inputs"]).logits - exp["cls"]).abs().max().item()

    # model_type mosaic_bert is not transformers': AutoTokenizer reads the config first, so it wants remote code too
    tokenizer = AutoTokenizer.from_pretrained(mlm_dir, trust_remote_code=True)
    fill = pipeline("fill-mask", model=mlm, tokenizer=tokenizer)
    report["fill_mask"] = fill("I [MASK] to the store yesterday.")
    print("REPORT" + json.dumps(report))
    """
)


def test_saved_folder_loads_as_remote_code_in_fresh_process(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=30528, alibi_starting_size=128)
    mlm = perturb_(BertForMaskedLM(cfg)).eval()
    mlm_dir, cls_dir = tmp_path / "mlm", tmp_path / "cls"
    mlm.save_pretrained(mlm_dir)
    AutoTokenizer.from_pretrained(BERT_TOKENIZER).save_pretrained(mlm_dir)
    cls = perturb_(BertForSequenceClassification(tiny_config(vocab_size=30528, num_labels=3)), seed=1).eval()
    cls.save_pretrained(cls_dir)

    # The folder is Hub-ready: weights, config with the four auto classes, the four code files.
    files = {p.name for p in mlm_dir.iterdir()}
    assert {"model.safetensors", "config.json", "configuration_bert.py", "modeling_bert.py", "bert_padding.py",
            "flash_attn_triton.py", "tokenizer.json"} <= files
    auto_map = json.loads((mlm_dir / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForTextEncoding", "AutoModelForMaskedLM",
                             "AutoModelForSequenceClassification",
                             "AutoModelForTokenClassification", "AutoModelForQuestionAnswering",
                             "AutoModelForMultipleChoice", "AutoModelForPreTraining",
                             "AutoModelForNextSentencePrediction", "AutoModelForCausalLM"}
    assert json.loads((mlm_dir / "config.json").read_text())["model_type"] == "mosaic_bert"

    ids = torch.randint(1, 30000, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    inputs = dict(input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        expected = dict(inputs=inputs, mlm=mlm(**inputs).logits, enc=mlm.bert(**inputs).last_hidden_state,
                        cls=cls(**inputs).logits)
    torch.save(expected, mlm_dir / "expected.pt")

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(mlm_dir), str(cls_dir)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.split("REPORT", 1)[1])
    assert report["config_class"].endswith("configuration_bert.BertConfig")
    assert report["model_module"].startswith("transformers_modules")  # loaded from the folder's code
    assert report["mlm"] <= 1e-5 and report["enc"] <= 1e-5 and report["cls"] <= 1e-5
    assert report["op_registered"] and report["export"] <= 1e-5
    assert report["long_shape"] == [1, 1024, 30528] and report["long_finite"]
    assert report["card_config"] == ["BertConfig", "mosaic_bert", 1024]  # the stock config was read as ours
    assert report["heads"] == ["BertForTokenClassification", "BertForQuestionAnswering", "BertForMultipleChoice"]
    answers = report["fill_mask"]
    assert len(answers) == 5 and all(0.0 <= a["score"] <= 1.0 for a in answers)
    assert all(a["sequence"].startswith("i ") and a["sequence"].endswith("to the store yesterday.") for a in answers)


def _imports(source: str):
    """(level, top-level module) of every import statement, at any depth (guarded imports included)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((0, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.level, (node.module or "").split(".")[0]


def test_shipped_files_import_only_torch_transformers_triton_and_each_other():
    """The four files travel alone next to the weights: they may import torch, transformers, an optional triton (and
    the optional flash-attn package), the standard library modules listed, and each other by relative import."""
    folder = os.path.dirname(MODELING_INIT)
    assert sorted(p for p in os.listdir(folder) if p.endswith(".py")) == sorted(SHIPPED + ("__init__.py",))
    local = {name[:-3] for name in SHIPPED}
    bad = []
    for name in SHIPPED:
        with open(os.path.join(folder, name)) as f:
            for level, top in _imports(f.read()):
                ok = top in local if level else top in ALLOWED_TOP_LEVEL
                if not ok:
                    bad.append(f"{name}: {'.' * level}{top}")
    assert not bad, f"shipped model files import outside torch/transformers/triton/each other: {bad}"
    # the check can fail: a tooling import is caught
    assert [t for _, t in _imports("from mosaic_bert.train import flops")] == ["mosaic_bert"]


# ----------------------------------------------------------------------------------------------------------------------
# Our own model_type (issue 16 item 6): transformers refuses the folder without remote code; the model card's stock
# BertConfig and original MosaicBERT checkpoints (model_type "bert") still load.


class _Records(logging.Handler):
    """Collects what the transformers and accelerate loggers emit (transformers' logger does not propagate)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        for name in ("transformers", "accelerate"):
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc):
        for name in ("transformers", "accelerate"):
            logging.getLogger(name).removeHandler(self)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model_type") / "mosaic-model-type"
    model = perturb_(BertForMaskedLM(tiny_config())).eval()
    model.save_pretrained(folder)
    return folder, model


def test_without_remote_code_transformers_refuses_the_folder(saved, tmp_path):
    folder, _ = saved
    assert json.loads((folder / "config.json").read_text())["model_type"] == "mosaic_bert"
    for load in (AutoConfig.from_pretrained, AutoModelForMaskedLM.from_pretrained):
        with pytest.raises(ValueError, match="trust_remote_code=True"):
            load(folder, trust_remote_code=False)
    # a copy whose config lost auto_map: refused as an unknown model type, not loaded as stock BERT
    shutil.copytree(folder, tmp_path / "no-auto-map")
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["auto_map"]
    (tmp_path / "no-auto-map" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="mosaic_bert"):
        AutoModelForMaskedLM.from_pretrained(tmp_path / "no-auto-map", trust_remote_code=True)


def test_every_auto_class_transformers_maps_for_bert_is_answered_by_our_code(saved):
    """transformers finds its own classes by the config's class name (BertConfig: ours, or the stock one the model
    card passes), so any Auto class with a "bert" entry missing from our auto_map would build stock BERT with a random
    encoder. All are listed (the heads MosaicBERT lacks raise)."""
    from mosaic_bert.modeling.modeling_bert import AUTO_MAP
    autos = {name: getattr(transformers, name) for name in dir(transformers) if name.startswith("AutoModel")}
    bert_autos = {name for name, auto in autos.items()
                  if "bert" in getattr(getattr(auto, "_model_mapping", None), "_model_mapping", {})}
    assert {"AutoModel", "AutoModelForMaskedLM", "AutoModelForPreTraining"} <= bert_autos
    assert bert_autos <= set(AUTO_MAP), bert_autos - set(AUTO_MAP)
    folder, _ = saved
    encoder = transformers.AutoModelForTextEncoding.from_pretrained(folder, trust_remote_code=True)
    assert type(encoder).__name__ == "BertModel" and type(encoder).__module__.startswith("transformers_modules")


def test_the_model_card_usage_reads_a_stock_config_as_ours(saved, tmp_path):
    """`transformers.BertConfig.from_pretrained(folder)`, `alibi_starting_size = 1024`, then the Auto class with
    `config=`: the model gets our config (model_type, sizes checked), and a folder it saves stays protected."""
    folder, model = saved
    config = transformers.BertConfig.from_pretrained(folder)
    config.alibi_starting_size = 1024
    card = AutoModelForMaskedLM.from_pretrained(folder, config=config, trust_remote_code=True).eval()
    assert type(card.config).__name__ == "BertConfig" and card.config.model_type == "mosaic_bert"
    assert card.config.alibi_starting_size == 1024 and card.config.hidden_size == model.config.hidden_size
    ids = torch.randint(1, 128, (2, 9))
    with torch.no_grad():
        assert torch.allclose(card(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
    card.save_pretrained(tmp_path / "resaved")
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["model_type"] == "mosaic_bert"
    # our classes take a stock config the same way
    direct = BertForMaskedLM.from_pretrained(folder, config=config)
    assert isinstance(direct.config, BertConfig) and direct.config.alibi_starting_size == 1024


def test_original_checkpoints_with_model_type_bert_load_silently_as_ours():
    assert json.loads((ORIGINAL_TINY / "config.json").read_text())["model_type"] == "bert"
    with _Records() as records:
        config = BertConfig.from_pretrained(ORIGINAL_TINY)
        model = BertForMaskedLM.from_pretrained(ORIGINAL_TINY)
    assert config.model_type == model.config.model_type == "mosaic_bert"
    assert config.alibi_starting_size == 32 and config.hidden_size == 64
    assert not [line for line in records.lines if "model of type" in line], records.lines


def test_save_is_silent_and_reload_reties_the_decoder(saved, tmp_path):
    """transformers 5 declares tied weights as a dict (`_tied_weights_keys`): save writes one copy without a
    "Removed shared tensor" message, and loading ties the decoder to the word embeddings again."""
    _, model = saved
    with _Records() as records, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save_pretrained(tmp_path / "tied")
    said = records.lines + [str(w.message) for w in caught]
    assert not [line for line in said if "shared tensor" in line or "tied" in line.lower()], said
    with safe_open(str(tmp_path / "tied" / "model.safetensors"), "pt") as f:
        assert "bert.embeddings.word_embeddings.weight" in f.keys()
        assert "cls.predictions.decoder.weight" not in f.keys()
    reloaded = BertForMaskedLM.from_pretrained(tmp_path / "tied")
    assert reloaded.cls.predictions.decoder.weight is reloaded.bert.embeddings.word_embeddings.weight
    assert torch.equal(reloaded.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)


def test_what_stays_outside_our_control_is_loud(saved, monkeypatch):
    """Two consequences of the own model_type that only transformers decides, pinned so that docs stay right:
    the stock class `transformers.BertForMaskedLM` still builds a stock BERT from our folder, but never silently (the
    model-type warning names mosaic_bert); and `AutoTokenizer` reads the config first, so without
    `trust_remote_code=True` it asks whether to run the folder's code (then falls back to a plain config)."""
    folder, _ = saved
    with _Records() as records:
        transformers.BertForMaskedLM.from_pretrained(folder)
    assert [line for line in records.lines if "model of type `mosaic_bert`" in line], records.lines
    AutoTokenizer.from_pretrained(BERT_TOKENIZER).save_pretrained(folder)
    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt="": asked.append(prompt) or "n")
    assert AutoTokenizer.from_pretrained(folder, trust_remote_code=True).mask_token == "[MASK]" and not asked
    assert AutoTokenizer.from_pretrained(folder).mask_token == "[MASK]"
    assert asked and "trust_remote_code=True" in asked[0]
