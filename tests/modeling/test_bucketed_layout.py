"""Bucketed inputs (`bert_padding.bucketed_layout`): the real-token count rounded up with filler tokens, the labelled
positions at a fixed capacity. Same loss, logits and gradients as the plain padded batch; no data-dependent size, so
torch.compile captures the training step in one graph without any flag."""

import pytest
import torch

from conftest import perturb_, tiny_config
from mosaic_bert import BertForMaskedLM, BertModel
from mosaic_bert.modeling.bert_padding import bucketed_layout, unpad_mask


def _batch(lengths, L=None, seed=0, docs=False):
    g = torch.Generator().manual_seed(seed)
    L = L or max(lengths) + 2
    ids = torch.zeros(len(lengths), L, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, 128, (n,), generator=g)
        mask[i, :n] = 1
        if docs and n > 2:
            mask[i, n // 2:n] = 2
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.4) & mask.bool(), ids, -100)
    labels[0, 0] = ids[0, 0]
    return ids, mask, labels


def _model(cls=BertForMaskedLM, **overrides):
    torch.manual_seed(0)
    return perturb_(cls(tiny_config(**{"attention_backend": "triton", "hidden_dropout_prob": 0.0, **overrides})))


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("docs", [False, True])
def test_layout_shapes_fixed_and_fillers_marked(docs):
    ids, mask, labels = _batch([5, 0, 9, 3], L=10, docs=docs)
    out = bucketed_layout(mask, labels, token_multiple=8, label_multiple=4, max_seqlen=10)
    real = unpad_mask(mask).indices
    n = real.shape[0]
    assert out["indices"].shape[0] % 8 == 0 and out["indices"].shape[0] >= n
    assert torch.equal(out["indices"][:n], real) and (out["indices"][n:] == ids.numel()).all()
    cu = out["cu_seq_lens_q"]
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == out["indices"].shape[0]
    assert ((cu[1:] - cu[:-1]) >= 0).all() and ((cu[1:] - cu[:-1]) <= 10).all()
    if not docs:  # a 0/1 mask: the length depends only on (batch, token_multiple, max_seqlen)
        assert cu.shape[0] == 4 + 1 + 1
    pos = out["masked_positions"]
    k = int((labels != -100).sum())
    assert pos.shape[0] % 4 == 0 and (pos[k:] == ids.numel()).all()
    assert torch.equal(pos[:k], torch.nonzero(labels.reshape(-1) != -100).flatten())


@pytest.mark.parametrize("docs", [False, True])
def test_bucketed_training_step_equals_padded(docs):
    ids, mask, labels = _batch([7, 3, 12, 5], docs=docs)
    model = _model().train()
    ref = model(input_ids=ids, attention_mask=mask, labels=labels)
    ref.loss.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)
    lay = bucketed_layout(mask, labels, token_multiple=16, label_multiple=8)
    got = model(input_ids=ids, attention_mask=mask, labels=labels, **lay)
    got.loss.backward()
    k = ref.logits.shape[0]
    assert got.logits.shape[0] == lay["masked_positions"].shape[0] > k
    assert torch.allclose(got.loss, ref.loss, atol=1e-6)
    assert torch.allclose(got.logits[:k], ref.logits, atol=1e-5)
    for name, g in _grads(model).items():
        assert torch.allclose(g, want[name], atol=1e-6), name


def test_bucketed_encoder_output_equals_padded_with_zeros_at_padding():
    ids, mask, _ = _batch([7, 3, 12, 5])
    model = _model(BertModel).eval()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model(input_ids=ids, attention_mask=mask, **bucketed_layout(mask, token_multiple=16)).last_hidden_state
    assert torch.allclose(got, ref, atol=1e-5)
    assert (got[~mask.bool()] == 0).all()


def test_bucketed_training_compiles_in_one_graph_and_matches_eager():
    """No flag: no data-dependent size is left, so fullgraph compilation of the whole step works."""
    ids, mask, labels = _batch([7, 3, 12, 5], seed=3)
    lay = bucketed_layout(mask, labels, token_multiple=16, label_multiple=8)
    inputs = dict(input_ids=ids, attention_mask=mask, labels=labels, **lay)
    model = _model(num_hidden_layers=1).train()
    eager = model(**inputs)
    eager.loss.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    assert torch._dynamo.explain(model)(**inputs).graph_break_count == 0
    torch._dynamo.reset()
    got = torch.compile(model, backend="inductor", fullgraph=True)(**inputs)
    got.loss.backward()
    assert abs(got.loss.item() - eager.loss.item()) < 1e-5
    for name, g in _grads(model).items():
        assert torch.allclose(g, want[name], atol=1e-5, rtol=1e-4), name
