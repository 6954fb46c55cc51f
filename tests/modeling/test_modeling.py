"""MosaicBERT model behaviour against independent references: the original implementation's tensors, float64 math,
padded vs unpadded, transformers' own loss rules."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, perturb_, ragged_batch, tiny_config
from mosaic_bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel
from mosaic_bert.modeling.modeling_bert import Sequences, alibi_slopes_list, torch_attention


def _maxdiff(a, b):
    return (a.double() - b.double()).abs().max().item()


# 1. Equal to the original implementation: tests/modeling/test_original_equivalence.py


# ----------------------------------------------------------------------------------------------------------------------
# 2. Parameter names and shapes of the original mosaic-bert-base


def test_base_state_dict_matches_original_names_and_shapes():
    ref = json.loads((FIXTURES / "mosaic-bert-base.state_dict.json").read_text())
    with torch.device("meta"):
        mlm = BertForMaskedLM(BertConfig())
        cls = BertForSequenceClassification(BertConfig(num_labels=2))
    assert {k: list(v.shape) for k, v in mlm.state_dict().items()} == ref["BertForMaskedLM"]
    assert {k: list(v.shape) for k, v in cls.state_dict().items()} == ref["BertForSequenceClassification"]
    unique = sum(p.numel() for p in mlm.parameters())  # parameters() yields a tied tensor once
    assert unique == ref["BertForMaskedLM_unique_params"] == 137_400_384
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight


# ----------------------------------------------------------------------------------------------------------------------
# 3. Padding, batching, packing


def _tiny_mlm(**overrides):
    torch.manual_seed(0)
    return perturb_(BertForMaskedLM(tiny_config(**overrides))).eval()


@pytest.mark.parametrize("backend", ["sdpa", "eager", "triton"])
def test_sequence_alone_equals_in_padded_batch_any_order(backend):
    model = _tiny_mlm(attention_backend=backend)
    g = torch.Generator().manual_seed(1)
    lengths = [7, 1, 12, 4]
    seqs = [torch.randint(1, 128, (n,), generator=g) for n in lengths]
    L = max(lengths) + 3
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        perm = torch.tensor([2, 0, 3, 1])
        permuted = model(input_ids=ids[perm], attention_mask=mask[perm]).logits
        for i, s in enumerate(seqs):
            alone = model(input_ids=s[None]).logits[0]
            assert _maxdiff(batched[i, : len(s)], alone) <= 1e-5
        assert _maxdiff(permuted, batched[perm]) <= 1e-5


def test_all_padding_row_gives_no_nan():
    model = _tiny_mlm()
    ids = torch.randint(1, 128, (3, 9))
    mask = torch.ones_like(ids)
    mask[1] = 0
    mask[2, 4:] = 0
    ids = ids * mask
    cls = BertForSequenceClassification(tiny_config(num_labels=2)).train()
    out = cls(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 1]))
    assert torch.isfinite(out.logits).all()
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in cls.parameters() if p.grad is not None)
    with torch.no_grad():
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.isfinite(hidden).all() and hidden[1].abs().max() == 0


def test_packed_documents_equal_separate_sequences():
    """attention_mask with document ids: attention never crosses documents, ALiBi restarts per document."""
    model = _tiny_mlm()
    g = torch.Generator().manual_seed(2)
    docs = [torch.randint(1, 128, (n,), generator=g) for n in (5, 3, 6)]
    row = torch.cat([docs[0], docs[1], torch.zeros(2, dtype=torch.long)])
    row2 = torch.cat([docs[2], torch.zeros(4, dtype=torch.long)])
    ids = torch.stack([row, row2])
    mask = torch.tensor([[1] * 5 + [2] * 3 + [0] * 2, [1] * 6 + [0] * 4])
    with torch.no_grad():
        packed = model(input_ids=ids, attention_mask=mask).logits
        assert _maxdiff(packed[0, :5], model(input_ids=docs[0][None]).logits[0]) <= 1e-5
        assert _maxdiff(packed[0, 5:8], model(input_ids=docs[1][None]).logits[0]) <= 1e-5
        assert _maxdiff(packed[1, :6], model(input_ids=docs[2][None]).logits[0]) <= 1e-5
        # Treating the whole row as one sequence gives something else: the mask matters.
        joined = model(input_ids=ids, attention_mask=mask.ne(0).long()).logits
        assert _maxdiff(joined[0, 5:8], packed[0, 5:8]) > 1e-3


def test_interleaved_documents_with_labels_keep_row_major_order():
    """Labelled logits come in row-major order even when document ids interleave (the unpadded order differs)."""
    model = _tiny_mlm()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 128, (1, 7), generator=g)
    mask = torch.tensor([[1, 2, 1, 2, 2, 1, 0]])
    labels = torch.full_like(ids, -100)
    labels[0, [1, 2, 4, 5]] = ids[0, [1, 2, 4, 5]]
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        doc1 = model(input_ids=ids[:, [0, 2, 5]]).logits[0]  # positions 0, 2, 5
        doc2 = model(input_ids=ids[:, [1, 3, 4]]).logits[0]  # positions 1, 3, 4
    want = torch.stack([doc2[0], doc1[1], doc2[2], doc1[2]])  # positions 1, 2, 4, 5
    assert _maxdiff(out.logits, want) <= 1e-5
    assert abs(out.loss.item() - F.cross_entropy(want, labels[labels != -100]).item()) <= 1e-5


# ----------------------------------------------------------------------------------------------------------------------
# Padding-free inputs (transformers' flattening convention) and collator-computed unpadding


def _ragged_batch(lengths, seed=4):
    return ragged_batch(lengths, seed, extra_cols=2)


@pytest.mark.parametrize("backend", ["sdpa", "eager", "triton"])
def test_padding_free_inputs_equal_padded(backend):
    model = _tiny_mlm(attention_backend=backend)
    lengths = [7, 1, 12, 4]
    ids, mask, labels, types, cu = _ragged_batch(lengths)
    real = mask.bool()
    flat = dict(input_ids=ids[real][None], token_type_ids=types[real][None])
    free = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        packed = model(**flat, **free).logits
        assert packed.shape == (1, sum(lengths), 128)
        assert _maxdiff(packed[0], padded[real]) <= 1e-5
        # position_ids alone (each sequence restarts at 0) give the same
        pos = torch.cat([torch.arange(n) for n in lengths])[None]
        assert _maxdiff(model(**flat, position_ids=pos).logits, packed) <= 1e-5
        # a padded batch with the unpadding computed by the collator (indices + cu_seqlens): no mask needed
        indices = torch.nonzero(real.flatten()).flatten()
        pre = model(input_ids=ids, token_type_ids=types, indices=indices, **free).logits
        assert _maxdiff(pre[real], padded[real]) <= 1e-5
        # MLM loss at the labelled tokens: same targets, same order
        loss_padded = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        loss_free = model(**flat, **free, labels=labels[real][None])
    assert abs(loss_padded.loss.item() - loss_free.loss.item()) <= 1e-6
    assert _maxdiff(loss_padded.logits, loss_free.logits) <= 1e-5
    # the wrong boundaries give another answer: the sequences really are separate
    with torch.no_grad():
        joined = model(**flat, cu_seq_lens_q=cu[[0, -1]], max_length_q=sum(lengths)).logits
    assert _maxdiff(joined, packed) > 1e-3


def test_transformers_flattening_collator_batch_runs_as_is():
    """What DataCollatorWithFlattening(return_flash_attn_kwargs=True) returns goes straight into the model."""
    from transformers import DataCollatorWithFlattening

    model = _tiny_mlm()
    g = torch.Generator().manual_seed(6)
    seqs = [torch.randint(1, 128, (n,), generator=g) for n in (6, 3, 9)]
    labels = [torch.where(torch.rand(len(s), generator=g) < 0.5, s, -100) for s in seqs]
    features = [{"input_ids": s.tolist(), "labels": y.tolist()} for s, y in zip(seqs, labels)]
    batch = DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_seq_idx=True)(features)
    assert {"cu_seq_lens_q", "max_length_q", "position_ids"} <= set(batch)
    with torch.no_grad():
        out = model(**batch)
        for i, s in enumerate(seqs):  # each sequence alone, at the tokens the collator kept as targets
            start = int(batch["cu_seq_lens_q"][i])
            keep = batch["labels"][0, start : start + len(s)] != -100
            alone = model(input_ids=s[None]).logits[0][keep]
            rows = (batch["labels"][0, :start] != -100).sum()
            assert _maxdiff(out.logits[rows : rows + len(alone)], alone) <= 1e-5


def test_padding_free_classification_pools_each_sequence():
    torch.manual_seed(0)
    model = perturb_(BertForSequenceClassification(tiny_config(num_labels=3))).eval()
    lengths = [5, 9, 2]
    ids, mask, _, _, cu = _ragged_batch(lengths)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        free = model(input_ids=ids[mask.bool()][None], cu_seq_lens_q=cu, max_length_q=max(lengths)).logits
    assert free.shape == (3, 3) and _maxdiff(free, padded) <= 1e-5


def test_padding_free_bad_inputs_raise_clear_errors():
    model = _tiny_mlm()
    ids = torch.randint(1, 128, (1, 10))
    with pytest.raises(ValueError, match="end at the number of tokens"):
        model(input_ids=ids, cu_seq_lens_q=torch.tensor([0, 4, 9]), max_length_q=5)
    with pytest.raises(ValueError, match="max_length_q is 3"):
        model(input_ids=ids, cu_seq_lens_q=torch.tensor([0, 4, 10]), max_length_q=3)
    with pytest.raises(ValueError, match=r"must be \(1, total\)"):
        model(input_ids=ids.view(2, 5), cu_seq_lens_q=torch.tensor([0, 4, 10]), max_length_q=6)
    with pytest.raises(ValueError, match="cu_seq_lens_q and max_length_q"):
        model(input_ids=ids, indices=torch.arange(10))
    # max_length_q may be left out in eager mode (it is then read from cu_seq_lens_q)
    out = model(input_ids=ids, cu_seq_lens_q=torch.tensor([0, 4, 10])).logits
    assert out.shape == (1, 10, 128)


# ----------------------------------------------------------------------------------------------------------------------
# ALiBi and attention against float64 math


def test_alibi_slopes_follow_the_paper():
    assert alibi_slopes_list(8) == [2.0**-k for k in range(1, 9)]
    assert alibi_slopes_list(4) == [2.0**-k for k in (2, 4, 6, 8)]
    # 12 heads: the 8-head slopes, then every other slope of the 16-head sequence 2^-0.5, 2^-1, ...
    expected_12 = [2.0**-k for k in range(1, 9)] + [2.0**-k for k in (0.5, 1.5, 2.5, 3.5)]
    assert alibi_slopes_list(12) == pytest.approx(expected_12, rel=1e-12)
    assert len(alibi_slopes_list(6)) == 6 and len(set(alibi_slopes_list(6))) == 6


def _attention_reference_f64(qkv, lengths, slopes):
    """Per sequence, float64: softmax(q k^T / sqrt(d) - slope |i - j|) v."""
    outs, start = [], 0
    for n in lengths:
        q, k, v = qkv[start : start + n].double().unbind(1)  # (n, h, d)
        d = q.shape[-1]
        scores = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(d)
        pos = torch.arange(n, dtype=torch.float64)
        scores = scores - torch.tensor(slopes, dtype=torch.float64)[:, None, None] * (pos[None, :] - pos[:, None]).abs()
        outs.append(torch.einsum("hij,jhd->ihd", scores.softmax(-1), v))
        start += n
    return torch.cat(outs)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("n_heads", [4, 6])
def test_torch_attention_matches_float64(backend, n_heads):
    g = torch.Generator().manual_seed(3)
    lengths = [1, 5, 17, 2]
    qkv = torch.randn(sum(lengths), 3, n_heads, 8, generator=g) * 2
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    slopes = alibi_slopes_list(n_heads)
    out = torch_attention(qkv, Sequences(cu, max(lengths)), torch.tensor(slopes), 0.0, backend)
    ref = _attention_reference_f64(qkv, lengths, slopes)
    assert (out.double() - ref).norm() / ref.norm() < 1e-5
    # The bias is really applied: other slopes give another answer.
    wrong = _attention_reference_f64(qkv, lengths, [s * 2 for s in slopes])
    assert (out.double() - wrong).norm() / wrong.norm() > 1e-2


# ----------------------------------------------------------------------------------------------------------------------
# MLM head at masked positions


def test_mlm_head_runs_only_at_labelled_positions():
    model = _tiny_mlm()
    ids = torch.randint(1, 128, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[0, 9], labels[1, 0], labels[1, 5] = 5, 6, 7, 8
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    picked = full[labels != -100]  # row-major order
    assert out.logits.shape == (4, 128)
    assert _maxdiff(out.logits, picked) <= 1e-5
    assert abs(out.loss.item() - F.cross_entropy(picked, labels[labels != -100]).item()) <= 1e-5
    # nothing labelled: a zero loss that still backpropagates
    loss = BertForMaskedLM(tiny_config())(input_ids=ids, labels=torch.full_like(ids, -100)).loss
    assert loss.item() == 0.0 and loss.requires_grad


# ----------------------------------------------------------------------------------------------------------------------
# Sequence classification losses follow transformers' rules


def test_classification_losses():
    torch.manual_seed(0)
    ids = torch.randint(1, 128, (3, 5))
    for num_labels, labels, fn in [
        (1, torch.tensor([0.5, -1.0, 2.0]), lambda lg, y: F.mse_loss(lg.squeeze(-1), y)),
        (3, torch.tensor([0, 2, 1]), F.cross_entropy),
        (3, torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0]]), F.binary_cross_entropy_with_logits),
    ]:
        model = BertForSequenceClassification(tiny_config(num_labels=num_labels)).eval()
        out = model(input_ids=ids, labels=labels)
        assert out.logits.shape == (3, num_labels)
        assert abs(out.loss.item() - fn(out.logits, labels).item()) < 1e-6


# ----------------------------------------------------------------------------------------------------------------------
# 5. Bad input gets a clear error


def test_bad_inputs_raise_clear_errors():
    model = _tiny_mlm()
    ids = torch.randint(1, 128, (2, 5))
    with pytest.raises(ValueError, match="vocab_size is 128"):
        model(input_ids=ids.clone().fill_(128))
    with pytest.raises(ValueError, match="vocab_size"):
        model(input_ids=ids.clone().fill_(-1))
    with pytest.raises(ValueError, match="type_vocab_size is 2"):
        model(input_ids=ids, token_type_ids=torch.full_like(ids, 2))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(input_ids=ids, attention_mask=torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, seqlen\)"):
        model(input_ids=ids[0])
    with pytest.raises(ValueError, match="padding positions"):
        mask = torch.ones_like(ids)
        mask[0, -1] = 0
        model(input_ids=ids, attention_mask=mask, labels=ids)
    with pytest.raises(ValueError, match="position_ids"):
        model(input_ids=ids, position_ids=torch.arange(5)[None])
    with pytest.raises(ValueError, match="attention_backend"):
        BertConfig(attention_backend="cuda")



def test_label_ids_out_of_range_name_the_fix():
    """Issue 16: MLM labels >= vocab_size and class ids >= num_labels used to end in an IndexError from the loss."""
    ids = torch.randint(1, 128, (2, 5))
    mlm = _tiny_mlm()
    for bad in (torch.full_like(ids, 500), torch.full_like(ids, -3)):
        with pytest.raises(ValueError, match="vocab_size is 128"):
            mlm(input_ids=ids, labels=bad)
    ok = torch.full_like(ids, -100)
    ok[0, 1] = 127
    assert torch.isfinite(mlm(input_ids=ids, labels=ok).loss)
    clf = BertForSequenceClassification(tiny_config(num_labels=3))
    with pytest.raises(ValueError, match="num_labels=3"):
        clf(input_ids=ids, labels=torch.tensor([0, 3]))
    assert torch.isfinite(clf(input_ids=ids, labels=torch.tensor([0, 2])).loss)


def test_masks_that_would_be_misread_are_refused():
    """Issue 16 item 5: a soft mask (0.5) used to become padding and an HF-style additive mask (0 / -10000) with no
    padding used to mean "all padding" -> all-zero outputs, silently. Both are refused; 0/1 masks of any dtype work."""
    model = _tiny_mlm().eval()
    ids = torch.randint(1, 128, (2, 5))
    ref = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    for dtype in (torch.long, torch.bool, torch.float32, torch.int32):
        assert torch.allclose(model(input_ids=ids, attention_mask=torch.ones(2, 5, dtype=dtype)).logits, ref)
    soft = torch.ones(2, 5)
    soft[0, 2] = 0.5
    additive_with_padding = torch.zeros(2, 5)
    additive_with_padding[1, -1] = -10000.0
    for bad, needle in ((soft, "fractional"), (additive_with_padding, "additive"), (torch.zeros(2, 5), "0 everywhere")):
        with pytest.raises(ValueError, match=needle):
            model(input_ids=ids, attention_mask=bad)


def test_loading_a_mismatched_checkpoint_names_the_keys(tmp_path):
    import transformers

    hf = transformers.BertForMaskedLM(
        transformers.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=48)
    )
    hf.save_pretrained(tmp_path / "stock")
    with pytest.raises(ValueError, match="position_embeddings"):
        BertForMaskedLM.from_pretrained(tmp_path / "stock")
    # same names, other shapes
    BertForMaskedLM(tiny_config()).save_pretrained(tmp_path / "tiny")
    with pytest.raises(Exception, match="Wqkv|size|shape"):
        BertForMaskedLM.from_pretrained(tmp_path / "tiny", intermediate_size=40, hidden_size=32)


# ----------------------------------------------------------------------------------------------------------------------
# Training features


def test_gradient_checkpointing_recomputes_and_gives_same_grads():
    torch.manual_seed(0)
    model = perturb_(BertForMaskedLM(tiny_config()))
    ids = torch.randint(1, 128, (2, 8))
    labels = torch.where(torch.rand(ids.shape) < 0.5, ids, torch.full_like(ids, -100))
    labels[0, 0] = ids[0, 0]
    calls = []
    # the first op of the layer: recomputation may stop early, before the layer's last modules
    model.bert.encoder.layer[0].attention.self.Wqkv.register_forward_hook(lambda *a: calls.append(1))

    def grads():
        model.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    model.train()
    plain = grads()
    assert len(calls) == 1
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    calls.clear()
    ckpt = grads()
    assert len(calls) == 2  # the layer ran again during backward
    for n in plain:
        assert torch.allclose(plain[n], ckpt[n], atol=1e-6), n


def test_low_precision_layernorm_under_autocast():
    torch.manual_seed(0)
    ids = torch.randint(1, 128, (2, 8))
    outs = {}
    for flag in (True, False):
        torch.manual_seed(0)  # same weights for both
        model = BertModel(tiny_config(low_precision_layernorm=flag)).eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs[flag] = model(input_ids=ids).last_hidden_state
    assert outs[True].dtype == torch.bfloat16
    assert outs[False].dtype == torch.float32
    assert _maxdiff(outs[True], outs[False]) < 0.1


def test_attention_dropout_is_applied_in_training_only():
    model = _tiny_mlm(attention_probs_dropout_prob=0.5)
    ids = torch.randint(1, 128, (2, 12))
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
        assert torch.equal(a, b)
        model.train()
        c, d = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert not torch.allclose(c, d)


def test_inputs_longer_than_alibi_starting_size_work_and_warn_once(caplog):
    torch.manual_seed(0)
    model = BertModel(tiny_config(alibi_starting_size=17)).eval()
    with torch.no_grad(), caplog.at_level("WARNING"):
        model(input_ids=torch.randint(1, 128, (1, 10)))
        assert "alibi_starting_size" not in caplog.text
        out = model(input_ids=torch.randint(1, 128, (1, 40))).last_hidden_state
        model(input_ids=torch.randint(1, 128, (2, 30)))
    assert caplog.text.count("alibi_starting_size=17") == 1
    assert out.shape == (1, 40, 32) and torch.isfinite(out).all()


def test_model_builds_on_meta_device_and_materialises():
    """Built on the meta device, moved to real (uninitialised) memory and initialised: every weight gets the model's
    init (N(0, initializer_range), zero biases and padding row, identity LayerNorm), none keeps whatever the memory
    held, the decoder stays tied. The std bound is 4 standard errors of a sample std (sqrt(1/2n) relative)."""
    std = 0.05   # not the default 0.02, and half of what nn.Linear's own init gives at fan-in 32 (0.10)
    with torch.device("meta"):
        model = BertForMaskedLM(tiny_config(initializer_range=std))
    model = model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    pad = model.config.pad_token_id
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        if "LayerNorm" in name or "layernorm" in name:
            assert torch.equal(p, torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p)), name
        elif name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            w = p.detach().double()
            if name.endswith("word_embeddings.weight"):
                assert w[pad].abs().max() == 0, name
                w = torch.cat([w[:pad], w[pad + 1:]])
            n = w.numel()
            assert abs(w.std().item() / std - 1) <= 4 * math.sqrt(1 / (2 * n)), (name, w.std().item())
            assert abs(w.mean().item()) <= 4 * std / math.sqrt(n), (name, w.mean().item())
    out = model(input_ids=torch.randint(1, 128, (1, 4))).logits
    assert out.shape == (1, 4, 128) and torch.isfinite(out).all()
