"""MLM masking: 30% / 15% ratios, the 80/10/10 split, special tokens, and batch-split independence."""

import numpy as np
import pytest

from mosaic_bert.train.masking import MLMMasker

MASK, SPECIALS, V = 4, [0, 1, 2, 3, 4], 1000


def _sample(p, n=4000, s=128, seed=0):
    rng = np.random.default_rng(1)
    ids = rng.integers(5, V, size=(n, s))
    ids[:, 0] = 2   # [CLS]
    ids[:, 100] = 3  # [SEP]
    ids[:, 101:] = 0  # [PAD]
    m = MLMMasker(MASK, SPECIALS, V, p, seed)
    out, labels = m(ids, np.arange(n))
    return ids, out.numpy(), labels.numpy()


@pytest.mark.parametrize("p", [0.30, 0.15])
def test_ratio_and_80_10_10(p):
    ids, out, labels = _sample(p)
    normal = ~np.isin(ids, SPECIALS)
    sel = labels != -100
    assert not sel[~normal].any()                       # special tokens are never selected
    assert (out[~normal] == ids[~normal]).all()         # nor altered
    ratio = sel.sum() / normal.sum()
    assert ratio == pytest.approx(p, abs=0.003)         # ~400k candidate tokens
    assert (labels[sel] == ids[sel]).all()
    n = sel.sum()
    to_mask = (out == MASK) & sel
    unchanged = (out == ids) & sel
    random_ = sel & ~to_mask & ~unchanged
    assert to_mask.sum() / n == pytest.approx(0.8, abs=0.005)
    # a random replacement can draw the original token (prob 1/V), which reads as "unchanged"
    assert unchanged.sum() / n == pytest.approx(0.1 + 0.1 / V, abs=0.004)
    assert random_.sum() / n == pytest.approx(0.1 - 0.1 / V, abs=0.004)
    assert ((out[random_] >= 0) & (out[random_] < V)).all()


def test_masks_are_a_function_of_sample_key():
    ids, out, labels = _sample(0.3, n=64)
    m = MLMMasker(MASK, SPECIALS, V, 0.3, 0)
    o1, l1 = m(ids[:32], np.arange(32))
    o2, l2 = m(ids[32:], np.arange(32, 64))
    np.testing.assert_array_equal(np.concatenate([o1, o2]), out)       # independent of how a batch is split
    np.testing.assert_array_equal(np.concatenate([l1, l2]), labels)
    o3, _ = MLMMasker(MASK, SPECIALS, V, 0.3, 1)(ids[:32], np.arange(32))
    assert (o3.numpy() != o1.numpy()).any()                             # and depends on the seed
    o4, _ = m(ids[:32], np.arange(1000, 1032))
    assert (o4.numpy() != o1.numpy()).any()                             # and on the key (epoch/position)


def test_matches_transformers_collator_statistics():
    """Same rule as DataCollatorForLanguageModeling (80/10/10, specials excluded), compared on a real tokenizer. The
    tolerance is 4 binomial standard errors of each rate over ~280k candidate tokens (0.0035 on the 30 % selection
    rate: a 2 % change of the rate, 0.300 -> 0.294, fails; 0.0030 on the 80 % [MASK] share)."""
    import torch
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling
    from pathlib import Path
    tok = AutoTokenizer.from_pretrained(str(Path(__file__).resolve().parents[1] / "fixtures" / "bert-base-uncased"))
    rows = 20_000
    enc = tok(["the quick brown fox jumps over the lazy dog and keeps running far away"], padding="max_length",
              max_length=24, truncation=True, return_tensors="np")
    ids = np.repeat(enc["input_ids"], rows, axis=0)
    candidates = ~np.isin(ids, tok.all_special_ids)
    n = int(candidates.sum())
    assert n == rows * 14          # 14 word pieces per row; [CLS], [SEP], [PAD] are never candidates
    ours_out, ours_lab = MLMMasker.from_tokenizer(tok, 0.3, 0)(ids, np.arange(rows))
    torch.manual_seed(0)
    coll = DataCollatorForLanguageModeling(tok, mlm_probability=0.3)
    theirs = coll([{"input_ids": torch.tensor(r)} for r in ids])
    se_sel = 4 * np.sqrt(0.3 * 0.7 / n)
    for out, lab in ((ours_out, ours_lab), (theirs["input_ids"], theirs["labels"])):
        sel = np.asarray(lab != -100)
        assert not sel[~candidates].any()
        assert sel.sum() / n == pytest.approx(0.3, abs=se_sel)
        k = int(sel.sum())
        masked = (np.asarray(out) == tok.mask_token_id) & sel
        assert masked.sum() / k == pytest.approx(0.8, abs=4 * np.sqrt(0.8 * 0.2 / k))


def test_recipes_mask_30_percent_for_training_and_15_for_evaluation():
    """The rates the trainer hands the masker: 30 % (the MosaicBERT paper) in the offline default and the paper
    recipes, 15 % for held-out evaluation; the HF BERT baseline trains at BERT's 15 %."""
    from mosaic_bert.train.config import load_recipe
    for name in (None, "mosaic-bert-base-uncased", "mosaic-bert-large-uncased"):
        t = load_recipe(name).train
        assert (t.mlm_probability, t.eval_mlm_probability) == (0.30, 0.15), name
    assert load_recipe("hf-bert-base-uncased").train.mlm_probability == 0.15
