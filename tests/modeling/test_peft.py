"""PEFT with default arguments (issue 12): `LoraConfig(task_type=...)` without `target_modules` picks its targets by
`config.model_type` from PEFT's own tables; the model adds "mosaic_bert" there (the fused q/k/v projection
`Wqkv`, as PEFT does for GPT-2 and MPT), so LoRA works out of the box while the checkpoint's parameter names stay."""

import pytest
import torch
import transformers

from conftest import perturb_, ragged_batch, tiny_config
from mosaic_bert import BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification
from mosaic_bert.modeling.modeling_bert import PEFT_DEFAULT_TARGET_MODULES, register_peft_defaults

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.utils import constants  # noqa: E402

QKV = [f"bert.encoder.layer.{i}.attention.self.Wqkv" for i in range(2)]


def _lora_modules(peft_model):
    return sorted(name.removeprefix("base_model.model.") for name, module in peft_model.named_modules()
                  if hasattr(module, "lora_A") and isinstance(module.lora_A, torch.nn.ModuleDict))


def _classifier():
    torch.manual_seed(0)
    return perturb_(BertForSequenceClassification(tiny_config(num_labels=3)))


def test_lora_with_default_arguments_targets_each_layers_qkv():
    model = _classifier()
    adapted = get_peft_model(model, LoraConfig(task_type="SEQ_CLS"))
    assert _lora_modules(adapted) == QKV
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable), trainable
    # PEFT's own default for stock BERT names modules we do not have: the table entry is what makes this work
    assert constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["bert"] == ["query", "value"]
    assert constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["mosaic_bert"] == PEFT_DEFAULT_TARGET_MODULES


def test_one_step_changes_only_the_adapter_and_merging_keeps_the_outputs():
    model = _classifier()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", lora_dropout=0.0)).train()
    before = {n: p.detach().clone() for n, p in adapted.named_parameters()}
    ids, mask, _, types, _ = ragged_batch([6, 3, 5], seed=1)
    labels = torch.tensor([0, 2, 1])
    opt = torch.optim.SGD([p for p in adapted.parameters() if p.requires_grad], lr=0.5)
    adapted(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss.backward()
    opt.step()
    changed = {n for n, p in adapted.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n or "modules_to_save" in n for n in changed), changed
    assert {n for n in changed if "lora_B" in n} == {n for n in before if "lora_B" in n}  # B starts at zero
    adapted.eval()
    with torch.no_grad():
        want = adapted(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        merged = adapted.merge_and_unload()
        got = merged(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert type(merged) is BertForSequenceClassification
    assert (got - want).abs().max() <= 1e-5 and (want - _base_logits(base_state, ids, mask, types)).abs().max() > 1e-4
    assert set(merged.state_dict()) == set(base_state)  # the checkpoint format (Wqkv, gated_layers, wo) is kept


def _base_logits(state, ids, mask, types):
    """The un-adapted model's logits, from its saved state."""
    model = BertForSequenceClassification(tiny_config(num_labels=3)).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits


def test_defaults_come_back_when_a_model_is_built(monkeypatch):
    """The table entry is added when the model file is imported with PEFT loaded, or when a model is built."""
    table = constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    monkeypatch.delitem(table, "mosaic_bert")
    BertForTokenClassification(tiny_config(num_labels=4))
    assert table["mosaic_bert"] == ["Wqkv"]
    monkeypatch.setitem(table, "mosaic_bert", ["wo"])  # a user's own entry is kept
    register_peft_defaults()
    assert table["mosaic_bert"] == ["wo"]


def test_lora_defaults_with_the_model_cards_stock_config(tmp_path):
    """A stock transformers.BertConfig passed as config= is read as ours, so PEFT sees model_type mosaic_bert."""
    BertForMaskedLM(tiny_config()).save_pretrained(tmp_path / "m")
    config = transformers.BertConfig.from_pretrained(tmp_path / "m")
    model = BertForTokenClassification.from_pretrained(tmp_path / "m", config=config)
    adapted = get_peft_model(model, LoraConfig(task_type="TOKEN_CLS"))
    assert _lora_modules(adapted) == QKV


def test_transformers_add_adapter_uses_the_same_defaults():
    """transformers' own PEFT integration (`model.add_adapter`) asks PEFT for the defaults too."""
    model = BertForTokenClassification(tiny_config(num_labels=3))
    model.add_adapter(LoraConfig())
    assert sorted({n.split(".lora_")[0] for n, _ in model.named_parameters() if ".lora_" in n}) == QKV
