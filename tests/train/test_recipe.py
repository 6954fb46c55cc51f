"""Recipes: YAML files, overrides, durations, the paper's numbers, batch arithmetic."""

import subprocess
import sys
from pathlib import Path

import pytest

from mosaic_bert.train.config import (RecipeError, check_batch, duration_to_steps, load_recipe,
                                warmup_steps)

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_default_yaml_is_the_embedded_default():
    assert load_recipe("tiny-default").to_dict() == load_recipe(None).to_dict()


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
