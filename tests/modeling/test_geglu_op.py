"""The GeGLU + dropout custom op (`torch.ops.mosaic_bert.geglu_dropout_fwd_v2` / `_bwd_v2`): the PyTorch path (CPU,
fp32) and the Triton kernels (in Triton's CPU interpreter, a child process) against float64 autograd; both paths
draw the same dropout mask."""

import os
import subprocess
import sys

import pytest
import torch

from mosaic_bert.modeling import flash_attn_triton as fa

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fwd_op():
    return getattr(torch.ops.mosaic_bert, fa._GEGLU_FWD_OP)


def _against_float64(gate_up, seed, p, dh):
    """(h, dgate_up) from the op, and the float64 autograd reference with the op's own dropout mask."""
    x = gate_up.detach().clone().requires_grad_(True)
    h, mask = _fwd_op()(x, seed, p)
    h.backward(dh)
    x64 = gate_up.detach().double().requires_grad_(True)
    g, u = x64.split(x64.shape[1] // 2, dim=-1)
    ref = torch.nn.functional.gelu(g) * u
    keep = fa.geglu_keep_mask(mask, *h.shape) if p > 0 else None
    if p > 0:
        ref = torch.where(keep, ref / (1 - p), 0.0)
    ref.backward(dh.double())
    return h, x.grad, ref.detach(), x64.grad, keep


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_pytorch_path_matches_float64_and_keeps_1_minus_p(p):
    g = torch.Generator().manual_seed(0)
    gate_up = torch.randn(64, 2 * 48, generator=g)
    dh = torch.randn(64, 48, generator=g)
    seed = torch.tensor([1234])
    h, dgu, ref, ref_grad, mask = _against_float64(gate_up, seed, p, dh)
    assert _rel(h, ref) < 1e-6 and _rel(dgu, ref_grad) < 1e-6
    if p > 0:
        assert mask.shape == h.shape
        assert abs(mask.float().mean().item() - (1 - p)) < 0.05
        assert torch.equal(_fwd_op()(gate_up, seed, p)[1].bool(), mask)  # a pure function of the seed
        assert not torch.equal(_fwd_op()(gate_up, seed + 1, p)[1].bool(), mask)
        big = ref.abs() > 1e-3  # where the product is not ~0 anyway, h is 0 exactly where the mask drops
        assert torch.equal((h == 0) & big, ~mask & big)
    assert torch.allclose(fa.geglu_dropout(gate_up, 0.0), torch.nn.functional.gelu(gate_up[:, :48]) * gate_up[:, 48:],
                          atol=1e-6)


def test_pytorch_path_passes_opcheck():
    gate_up = torch.randn(8, 16, requires_grad=True)
    for p in (0.0, 0.2):
        result = torch.library.opcheck(_fwd_op(), (gate_up, torch.tensor([7]), p))
        assert all(v == "SUCCESS" for v in result.values()), result


CHILD_CODE = r"""
import torch
from mosaic_bert.modeling import flash_attn_triton as fa
import tests.modeling.test_geglu_op as t
assert fa._geglu_kernels(torch.zeros(2, 4, dtype=torch.bfloat16))
torch.manual_seed(0)
for n, i, p in ((37, 40, 0.0), (37, 40, 0.1), (5, 1030, 0.3)):  # ragged rows and columns, > one column block
    gate_up = (torch.randn(n, 2 * i) * 2).to(torch.bfloat16)
    dh = torch.randn(n, i).to(torch.bfloat16)
    h, dgu, ref, ref_grad, mask = t._against_float64(gate_up, torch.tensor([99]), p, dh)
    assert h.dtype == torch.bfloat16 and dgu.dtype == torch.bfloat16
    assert t._rel(h, ref) < 1e-2 and t._rel(dgu, ref_grad) < 1e-2, (n, i, p, t._rel(h, ref), t._rel(dgu, ref_grad))
    if p > 0:
        frac = mask.float().mean().item()
        assert abs(frac - (1 - p)) < 0.04, frac
        assert torch.equal(mask, fa.geglu_keep_reference(torch.tensor([99]), n, i, p))  # the PyTorch path's mask
        big = ref.abs() > 1e-3
        assert mask.shape == h.shape and torch.equal((h == 0) & big, ~mask & big)
print("OK")
"""


def test_triton_kernels_in_the_interpreter_match_float64():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", CHILD_CODE], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, (r.stdout + r.stderr)[-4000:]


def test_training_with_dropout_compiles_in_one_graph_and_the_op_is_in_it():
    """The op and its seed (torch.randint in the graph) compile with fullgraph; dropout is active (p = 0.1)."""
    from conftest import tiny_config
    from mosaic_bert import BertForMaskedLM
    from mosaic_bert.modeling.bert_padding import bucketed_layout

    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config(hidden_dropout_prob=0.1, attention_backend="triton")).train()
    ids = torch.randint(1, 128, (3, 12))
    mask = (torch.arange(12)[None] < torch.tensor([12, 7, 9])[:, None]).long()
    labels = torch.where(torch.rand(3, 12) < 0.4, ids, -100) * mask + (-100) * (1 - mask)
    labels[0, 0] = ids[0, 0]
    inputs = dict(input_ids=ids * mask, attention_mask=mask, labels=labels, **bucketed_layout(mask, labels))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(**inputs)
    assert explained.graph_break_count == 0
    assert any("geglu_dropout_fwd_v2" in str(n.target) for g in explained.graphs for n in g.graph.nodes)
    torch._dynamo.reset()
    out = torch.compile(model, backend="inductor", fullgraph=True)(**inputs)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.bert.encoder.layer[0].mlp.gated_layers.weight.grad.abs().sum() > 0
