"""Recipes: YAML files, overrides, durations, the paper's numbers, batch arithmetic."""

import subprocess
import sys
from pathlib import Path

import pytest

from mosaic_bert.train.config import (RECIPES_DIR, RecipeError, check_batch, duration_to_steps, load_recipe,
                                      warmup_steps)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["tiny-default", "mosaic-bert-base-uncased", "mosaic-bert-large-uncased",
                                  "hf-bert-base-uncased"])
def test_shipped_recipe_keys_all_arrive(name):
    """Every key a shipped YAML sets reaches the recipe with its value (no key silently dropped or re-typed away)."""
    import yaml
    raw = yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text())
    r = load_recipe(name).to_dict()
    assert r["name"] == raw["name"] == name
    for section, values in raw.items():
        if section == "name":
            continue
        for k, v in values.items():
            got = r[section][k]
            assert (list(got) if isinstance(got, tuple) else got) == (float(v) if isinstance(got, float) else v), (section, k)


def test_no_recipe_means_the_tiny_default_the_readme_describes():
    r = load_recipe(None)
    assert r.name == "tiny-default" and r.train.output_dir == "runs/tiny-default"
    assert (r.model.hidden_size, r.model.num_hidden_layers, r.tokenizer.vocab_size) == (256, 2, 4096)
    assert (r.tokenizer.name_or_path, r.data.train_files, r.data.hub_name) == (None, None, None)  # embedded corpus
    assert r.train.max_duration == "400ba" and r.train.global_batch_size == 64


def test_model_section_is_bert_config():
    """The model section's fields and defaults are BertConfig's (only the vocabulary comes from the tokenizer), so
    a new config field needs no recipe change; overrides reach the built model's config."""
    from mosaic_bert.modeling import BertConfig
    from mosaic_bert.train.model import model_family
    defaults = BertConfig().to_dict()
    model = load_recipe(None).model.__class__()
    for k in ("fused_geglu", "low_precision_layernorm", "attention_backend", "alibi_starting_size", "layer_norm_eps"):
        assert getattr(model, k) == defaults[k]
    assert model.vocab_size is None and not hasattr(model, "pad_token_id")
    r = load_recipe(None, ["model.low_precision_layernorm=false", "model.attention_backend=eager",
                           "model.layer_norm_eps=1e-6", "model.num_hidden_layers=1"])
    cfg = model_family("mosaic").build(r.model, tokenizer_len=100, pad_token_id=3).config
    assert (cfg.low_precision_layernorm, cfg.attention_backend, cfg.layer_norm_eps) == (False, "eager", 1e-6)
    assert (cfg.vocab_size, cfg.pad_token_id, cfg.hidden_size) == (128, 3, 256)
    with pytest.raises(RecipeError, match="attention_backend"):
        model_family("mosaic").build(load_recipe(None, ["model.attention_backend=fast"]).model, 100, 0)
    hf = model_family("hf").build(load_recipe(None, ["model.family=hf", "model.num_hidden_layers=1"]).model, 100, 0)
    assert type(hf).__module__.startswith("transformers") and not hasattr(hf.config, "alibi_starting_size")


def test_fingerprint_is_marked_on_the_fields():
    base = load_recipe(None).fingerprint()
    for detail in ("train.eval_interval=7", "train.output_dir=elsewhere", "data.num_workers=3", "train.trackers=none"):
        assert load_recipe(None, [detail]).fingerprint() == base, detail
    for identity in ("train.lr=1e-4", "model.fused_geglu=false", "data.max_seq_len=64", "tokenizer.vocab_size=512"):
        assert load_recipe(None, [identity]).fingerprint() != base, identity


def test_paper_recipe_numbers():
    r = load_recipe("mosaic-bert-base-uncased")
    t = r.train
    assert (r.data.max_seq_len, t.mlm_probability, t.global_batch_size, t.lr) == (128, 0.30, 4096, 5e-4)
    assert (t.betas, t.eps, t.weight_decay, t.warmup, t.alpha_f) == ((0.9, 0.98), 1e-6, 1e-5, 0.06, 0.02)
    steps = duration_to_steps(t.max_duration, t.global_batch_size, 100.0)
    assert steps == 70_000 and warmup_steps(t.warmup, steps) == 4200
    assert check_batch(r, 8) == 4                      # 128 x 4 x 8 = 4096
    hf = load_recipe("hf-bert-base-uncased")
    assert (hf.model.family, hf.train.mlm_probability, hf.model.attention_probs_dropout_prob) == ("hf", 0.15, 0.1)
    large = load_recipe("mosaic-bert-large-uncased")
    assert (large.model.hidden_size, large.model.num_hidden_layers) == (1024, 24)


def test_overrides_and_durations():
    r = load_recipe(None, ["train.lr=1e-4", "train.max_duration=1e6tok", "data.train_files=[a.txt, b.txt]",
                           "model.family=hf", "train.warmup=100ba"])
    assert r.train.lr == 1e-4 and isinstance(r.train.lr, float)
    assert r.data.train_files == ["a.txt", "b.txt"] and r.model.family == "hf"
    assert duration_to_steps(r.train.max_duration, 32, 100.0) == 313   # 1e6 tokens / (32 x 100)
    assert duration_to_steps("1000sp", 32, 100.0) == 32
    assert warmup_steps(r.train.warmup, 1000) == 100 and warmup_steps(0.06, 1000) == 60
    with pytest.raises(RecipeError, match="Unknown recipe key 'train.learning_rate'"):
        load_recipe(None, ["train.learning_rate=1"])
    with pytest.raises(RecipeError, match="max_duration"):
        load_recipe(None, ["train.max_duration=ten"])
    with pytest.raises(RecipeError, match="only MosaicBERT"):
        load_recipe(None, ["model.family=hf", "data.mode=pack"])


def test_batch_divisibility_error():
    r = load_recipe(None, ["train.global_batch_size=96", "train.microbatch_size=32"])
    assert check_batch(r, 1) == 3 and check_batch(r, 3) == 1
    with pytest.raises(RecipeError, match=r"not divisible by microbatch_size x processes = 32 x 2 = 64.*microbatch_size=24"):
        check_batch(r, 2)


def test_print_recipe_cli():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain.py"), "mosaic-bert-base-uncased",
                        "train.lr=3e-4", "--print-recipe"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "lr: 0.0003" in p.stdout


def test_checkpoint_compatibility_against_older_fingerprints():
    """A field added since a checkpoint was written counts as its default there; a changed value is refused."""
    import json
    from mosaic_bert.train.checkpoint import fingerprint_diffs
    as_json = lambda r: json.loads(json.dumps(r.fingerprint(), default=str))
    now, defaults = as_json(load_recipe(None)), as_json(load_recipe(None).__class__())
    older = json.loads(json.dumps(now))
    del older["model"]["fused_geglu"]                       # not recorded then
    older["model"]["extra"] = {}                            # recorded then, removed since
    assert fingerprint_diffs(older, now, defaults) == []
    older["train"]["lr"] = 0.5
    assert fingerprint_diffs(older, now, defaults) == ["train.lr: checkpoint 0.5 vs now 0.002"]


def test_precision_no_on_the_command_line_means_fp32():
    """`train.mixed_precision=no` is YAML's false; the error listed `no` as valid and then refused it."""
    assert load_recipe(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(RecipeError, match="mixed_precision must be one of"):
        load_recipe(None, ["train.mixed_precision=fp8"])
