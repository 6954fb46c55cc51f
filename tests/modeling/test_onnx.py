"""ONNX export through the dynamo exporter (`torch.onnx.export(..., dynamo=True)`), run in onnxruntime: outputs equal
PyTorch's within float tolerance, on the export batch and on batches of other sizes (dynamic batch and sequence
length). The PyTorch attention paths export ("sdpa", "eager", and "mosaic_auto", which is SDPA off CUDA); the Triton
kernel's custom op has no ONNX translation. Skipped when onnx, onnxruntime or onnxscript is not installed (the dev
extra has them)."""

import pytest
import torch

from conftest import perturb_, ragged_batch, tiny_config
from mosaic_bert import BertForSequenceClassification, BertModel

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TOL = 1e-5


def _export(model, path, output_names):
    ids, mask, *_ = ragged_batch([6, 2, 9], 0, 1)
    batch, seqlen = torch.export.Dim("batch", max=64), torch.export.Dim("seqlen", min=2, max=1024)
    torch.onnx.export(model, (), str(path), kwargs=dict(input_ids=ids, attention_mask=mask), dynamo=True,
                      dynamic_shapes=dict(input_ids={0: batch, 1: seqlen}, attention_mask={0: batch, 1: seqlen}),
                      input_names=["input_ids", "attention_mask"], output_names=output_names, verbose=False)
    onnx.checker.check_model(str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("cls, backend", [(BertForSequenceClassification, "sdpa"), (BertModel, "eager")])
def test_onnx_export_runs_in_onnxruntime_and_matches_pytorch(cls, backend, tmp_path):
    torch.manual_seed(0)
    model = perturb_(cls(tiny_config(attention_backend=backend, num_labels=3))).eval()
    names = ["logits"] if cls is BertForSequenceClassification else ["last_hidden_state", "pooler_output"]
    session = _export(model, tmp_path / "model.onnx", names)
    assert [o.name for o in session.get_outputs()] == names
    for lengths, seed in (([6, 2, 9], 0), ([3, 17, 1, 11, 4], 2), ([5], 3)):  # the export batch, then others
        ids, mask, *_ = ragged_batch(lengths, seed, 1)
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask)
        want = [out.logits] if cls is BertForSequenceClassification else [out.last_hidden_state, out.pooler_output]
        for g, w in zip(got, want):
            assert g.shape == tuple(w.shape)
            assert (torch.from_numpy(g) - w).abs().max().item() < TOL
    # the check can fail: other token ids give other outputs
    with torch.no_grad():
        other = model(input_ids=torch.where(mask.bool(), ids % 127 + 1, ids), attention_mask=mask)[0]
    assert (torch.from_numpy(got[0]) - other).abs().max().item() > 1e-3
