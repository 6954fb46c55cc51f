"""Equal to the original MosaicBERT implementation: its weights loaded here reproduce the tensors it produced
(tests/fixtures/original_*/, see ../shared/reference/README.md for how they were made).

Two fixtures: `original_tiny` at init scale (weights ~0.02: activations small, most architectural slips change the
outputs by less than float32 noise; gradients for 4 parameters) and `original_scaled` at initializer_range 0.2
(activations O(1), logits up to ~6, a reference gradient for every parameter). Errors are measured relative to the
reference's largest magnitude: |ours - ref|max / |ref|max. Observed on CPU float32 (sdpa / eager / the Triton op's
PyTorch path): tiny <= 3.3e-7, scaled <= 5.3e-6 (gradients included); tolerances are ~4-6x that. What these tests
catch (tanh GELU, ALiBi slope order or sign, pre-LN, GeGLU halves swapped, ...) is listed in tests/mutations/README.md.
"""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import ORIGINAL_SCALED, ORIGINAL_TINY
from mosaic_bert import BertForMaskedLM, BertForSequenceClassification, BertModel

FIXTURES = {"original_tiny": ORIGINAL_TINY, "original_scaled": ORIGINAL_SCALED}
RTOL = {"original_tiny": 2e-6, "original_scaled": 2e-5}
BACKENDS = ["sdpa", "eager", "triton"]  # triton off CUDA: the custom op's PyTorch path


@pytest.fixture(scope="module", params=list(FIXTURES))
def ref(request):
    folder = FIXTURES[request.param]
    return request.param, folder, load_file(folder / "io.safetensors")


def _inputs(io):
    return dict(input_ids=io["input_ids"], attention_mask=io["attention_mask"], token_type_ids=io["token_type_ids"])


def rel_err(ours, want) -> float:
    """Largest absolute difference relative to the reference's largest magnitude (float64)."""
    ours, want = ours.detach().double(), want.double()
    assert ours.shape == want.shape, (tuple(ours.shape), tuple(want.shape))
    return ((ours - want).abs().max() / want.abs().max()).item()


def test_scaled_fixture_is_at_a_scale_that_tells_architectures_apart():
    """The premise of `original_scaled`: O(1) activations and a gradient for every parameter of the MLM model."""
    io = load_file(ORIGINAL_SCALED / "io.safetensors")
    assert io["mlm_logits"].abs().max() > 3 and io["last_hidden_state"][io["attention_mask"].bool()].std() > 0.5
    names = {n for n, _ in BertForMaskedLM.from_pretrained(ORIGINAL_SCALED).named_parameters()}
    assert {k[len("grad."):] for k in io if k.startswith("grad.")} == names


@pytest.mark.parametrize("backend", BACKENDS)
def test_mlm_logits_loss_and_gradients_match_original(ref, backend):
    name, folder, io = ref
    tol = RTOL[name]
    model = BertForMaskedLM.from_pretrained(folder, attention_backend=backend).eval()
    real = io["attention_mask"].bool()
    with torch.no_grad():
        logits = model(**_inputs(io)).logits
    assert logits.shape == io["mlm_logits"].shape
    assert rel_err(logits[real], io["mlm_logits"][real]) <= tol

    out = model(**_inputs(io), labels=io["labels"])
    assert rel_err(out.loss.reshape(1), io["mlm_loss"]) <= tol
    assert rel_err(out.logits, io["mlm_logits_at_labels"]) <= tol

    out.loss.backward()
    params = dict(model.named_parameters())
    grads = {k[len("grad."):]: v for k, v in io.items() if k.startswith("grad.")}
    assert len(grads) == (4 if name == "original_tiny" else len(params))
    errs = {k: rel_err(params[k].grad, g) for k, g in grads.items()}
    bad = {k: e for k, e in errs.items() if not e <= tol}
    assert not bad, bad


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_path_without_dropout_matches_original(ref, backend):
    """In train mode the GeGLU runs through the training custom op (`geglu_dropout`, its PyTorch path here): with
    dropout 0 its loss, logits and every gradient equal the original's eval-mode tensors."""
    name, folder, io = ref
    tol = RTOL[name]
    model = BertForMaskedLM.from_pretrained(folder, attention_backend=backend, hidden_dropout_prob=0.0).train()
    out = model(**_inputs(io), labels=io["labels"])
    assert rel_err(out.loss.reshape(1), io["mlm_loss"]) <= tol
    assert rel_err(out.logits, io["mlm_logits_at_labels"]) <= tol
    out.loss.backward()
    params = dict(model.named_parameters())
    errs = {k[len("grad."):]: rel_err(params[k[len("grad."):]].grad, g) for k, g in io.items() if k.startswith("grad.")}
    bad = {k: e for k, e in errs.items() if not e <= tol}
    assert not bad, bad


@pytest.mark.parametrize("backend", BACKENDS)
def test_encoder_output_matches_original(ref, backend):
    name, folder, io = ref
    model = BertModel.from_pretrained(folder, attention_backend=backend).eval()
    real = io["attention_mask"].bool()
    with torch.no_grad():
        hidden = model(**_inputs(io)).last_hidden_state
    assert rel_err(hidden[real], io["last_hidden_state"][real]) <= RTOL[name]
    assert hidden[~real].abs().max().item() == 0.0  # repadded with zeros


@pytest.mark.parametrize("weights,key", [("cls_model", "cls_logits"), ("reg_model", "reg_logits")])
def test_classifier_and_regression_logits_match_original(ref, tmp_path, weights, key):
    name, folder, io = ref
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    shutil.copy(folder / f"{weights}.safetensors", tmp_path / "model.safetensors")
    model = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=io[key].shape[1]).eval()
    with torch.no_grad():
        logits = model(**_inputs(io)).logits
    assert rel_err(logits, io[key]) <= RTOL[name]
