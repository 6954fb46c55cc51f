"""The model under torch.compile (Inductor on CPU) and torch.export, against eager.

The attention runs as the custom op `torch.ops.mosaic_bert.varlen_alibi_attn_fwd_v1` (attention_backend="triton":
the Triton kernel on CUDA, the same math in PyTorch here), so CPU CI exercises the op the GPU path uses.
Data-dependent sizes: padding-free inputs have none; a padded `attention_mask` and MLM `labels` have some (the number
of real / labelled tokens), which fullgraph compilation captures with
`torch._dynamo.config.capture_dynamic_output_shape_ops = True` and torch.export captures by itself.
"""

import pytest
import torch

from conftest import perturb_, ragged_batch, tiny_config
from mosaic_bert import BertForMaskedLM, BertForSequenceClassification, BertModel


def _batch(lengths, seed=0):
    ids, mask, labels, _, cu = ragged_batch(lengths, seed, extra_cols=1)
    labels[0, 0] = ids[0, 0]
    return ids, mask, labels, cu


def _model(cls=BertForMaskedLM, **overrides):
    torch.manual_seed(0)
    return perturb_(cls(tiny_config(**{"attention_backend": "triton", **overrides})))


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _break_count(model, **inputs):
    torch._dynamo.reset()
    return torch._dynamo.explain(model)(**inputs).graph_break_count


@pytest.mark.parametrize("backend", ["triton", "sdpa"])
def test_padding_free_forward_has_no_graph_break(backend):
    """Padding-free inputs with their sizes given: one graph, no flags needed."""
    lengths = [6, 2, 9]
    ids, mask, _, cu = _batch(lengths)
    free = dict(input_ids=ids[mask.bool()][None], cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=9, max_length_k=9)
    model = _model(attention_backend=backend).eval()
    assert _break_count(model, **free) == 0
    assert _break_count(_model(BertModel).eval(), **free) == 0
    # the check can fail: a host sync in the forward (max_length_q left out) is a graph break
    assert _break_count(model, input_ids=free["input_ids"], cu_seq_lens_q=cu) > 0


def test_padded_inputs_and_labels_have_no_graph_break_with_dynamic_output_shapes():
    ids, mask, labels, _ = _batch([6, 2, 9])
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        assert _break_count(_model().train(), input_ids=ids, attention_mask=mask, labels=labels) == 0


def test_compiled_training_step_matches_eager_inductor_fullgraph():
    """Inductor on CPU, fullgraph=True: a padded batch with MLM labels, forward + backward."""
    ids, mask, labels, _ = _batch([7, 3, 12, 5])
    model = _model(num_hidden_layers=1).train()
    eager = model(input_ids=ids, attention_mask=mask, labels=labels)
    eager.loss.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        compiled = torch.compile(model, backend="inductor", fullgraph=True)
        got = compiled(input_ids=ids, attention_mask=mask, labels=labels)
        got.loss.backward()
    assert abs(got.loss.item() - eager.loss.item()) < 1e-5
    assert torch.allclose(got.logits, eager.logits, atol=1e-5)
    grads = _grads(model)
    assert set(grads) == set(want)
    for name in want:
        assert torch.allclose(grads[name], want[name], atol=1e-5, rtol=1e-4), name
    # the attention op really ran inside the compiled step (its backward gives the Wqkv weight a gradient)
    assert grads["bert.encoder.layer.0.attention.self.Wqkv.weight"].abs().sum() > 0


def test_compiled_padding_free_training_matches_eager():
    lengths = [7, 3, 12]
    ids, mask, labels, cu = _batch(lengths, seed=1)
    real = mask.bool()
    inputs = dict(input_ids=ids[real][None], labels=labels[real][None], cu_seq_lens_q=cu, max_length_q=12)
    model = _model().train()
    eager = model(**inputs)
    eager.loss.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        got = torch.compile(model, backend="aot_eager", fullgraph=True)(**inputs)
        got.loss.backward()
    assert abs(got.loss.item() - eager.loss.item()) < 1e-6
    for name, g in _grads(model).items():
        assert torch.allclose(g, want[name], atol=1e-6), name


@pytest.mark.parametrize("cls", [BertModel, BertForSequenceClassification, BertForMaskedLM])
def test_export_matches_eager_on_other_shapes(cls):
    model = _model(cls, num_labels=3).eval()
    ids, mask, _, _ = _batch([6, 2, 9])
    batch, seqlen = torch.export.Dim("batch", max=64), torch.export.Dim("seqlen", min=2, max=1024)
    shapes = dict(input_ids={0: batch, 1: seqlen}, attention_mask={0: batch, 1: seqlen})
    program = torch.export.export(model, (), dict(input_ids=ids, attention_mask=mask), dynamic_shapes=shapes)
    targets = {str(n.target) for n in program.graph.nodes}
    assert any("mosaic_bert.varlen_alibi_attn_fwd_v1" in t for t in targets), targets
    run = program.module()
    ids2, mask2, _, _ = _batch([3, 17, 1, 11, 4], seed=2)
    with torch.no_grad():
        for i, m in ((ids, mask), (ids2, mask2)):
            want = model(input_ids=i, attention_mask=m)[0]  # logits, or the base model's last_hidden_state
            got = run(input_ids=i, attention_mask=m)[0]
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
