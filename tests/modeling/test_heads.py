"""The standard heads beside masked LM and sequence classification (issue 12): token classification, extractive
question answering and multiple choice, with transformers' contract (argument names, output classes, -100 = no loss,
QA positions past the input ignored). Checked against independent references: the encoder weights of a saved folder,
float64 cross-entropy on the returned logits, each sequence run alone (no padding), transformers' pipelines. Stock BERT
heads that MosaicBERT does not have fail loudly instead of loading stock BERT with a random encoder."""

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import (AutoModelForMultipleChoice, AutoModelForNextSentencePrediction, AutoModelForPreTraining,
                          AutoModelForQuestionAnswering, AutoModelForTokenClassification, AutoModelForCausalLM,
                          AutoTokenizer, pipeline)
from transformers.modeling_outputs import (MultipleChoiceModelOutput, QuestionAnsweringModelOutput,
                                           TokenClassifierOutput)

from conftest import BERT_TOKENIZER, perturb_, ragged_batch, tiny_config
from mosaic_bert import (BertForMaskedLM, BertForMultipleChoice, BertForPreTraining, BertForQuestionAnswering,
                         BertForTokenClassification)

HEADS = {
    "token": (AutoModelForTokenClassification, "BertForTokenClassification", dict(num_labels=5)),
    "qa": (AutoModelForQuestionAnswering, "BertForQuestionAnswering", {}),
    "choice": (AutoModelForMultipleChoice, "BertForMultipleChoice", {}),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A saved MosaicBERT (MLM) folder with the tokenizer: what users fine-tune from."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("heads") / "mosaic-heads"
    perturb_(BertForMaskedLM(tiny_config(vocab_size=30528))).save_pretrained(path)
    AutoTokenizer.from_pretrained(BERT_TOKENIZER).save_pretrained(path)
    return path


def _encoder_state(model):
    return {k: v for k, v in model.state_dict().items() if k.startswith(("bert.embeddings.", "bert.encoder."))}


@pytest.mark.parametrize("head", HEADS)
def test_each_head_loads_our_encoder_from_a_saved_folder(folder, head):
    auto, name, kw = HEADS[head]
    model = auto.from_pretrained(folder, trust_remote_code=True, **kw)
    assert type(model).__name__ == name and type(model).__module__.startswith("transformers_modules")
    saved = _encoder_state(BertForMaskedLM.from_pretrained(folder))
    loaded = _encoder_state(model)
    assert set(loaded) == set(saved) and len(saved) > 10
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert model.config.model_type == "mosaic_bert"


def _token_model(num_labels=5):
    torch.manual_seed(1)
    return perturb_(BertForTokenClassification(tiny_config(num_labels=num_labels)))


def test_token_classification_loss_grads_and_padding():
    model = _token_model().train()
    ids, mask, _, types, _ = ragged_batch([7, 3, 5], seed=2)
    labels = torch.randint(0, 5, ids.shape).masked_fill(mask == 0, -100)
    labels[0, 0] = labels[2, 4] = -100  # e.g. [CLS] and a word continuation
    out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    assert isinstance(out, TokenClassifierOutput) and out.logits.shape == (3, ids.shape[1], 5)
    assert out.logits[mask == 0].abs().max() == 0  # zeros at padding, as the encoder's output
    ref = F.cross_entropy(out.logits.double().reshape(-1, 5), labels.reshape(-1), ignore_index=-100)
    assert abs(out.loss.item() - ref.item()) <= 1e-6
    out.loss.backward()
    for p in (model.classifier.weight, model.bert.encoder.layer[0].attention.self.Wqkv.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    loss, logits = model.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels,
                                return_dict=False)  # transformers' tuple form: (loss, logits)
    assert logits.shape == out.logits.shape and loss.shape == ()


def test_token_classification_padded_equals_each_sequence_alone():
    model = _token_model().eval()
    ids, mask, _, types, _ = ragged_batch([6, 2, 4], seed=3, extra_cols=2)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        for i, n in enumerate(mask.sum(1).tolist()):
            alone = model(input_ids=ids[i:i + 1, :n], token_type_ids=types[i:i + 1, :n]).logits[0]
            assert (batched[i, :n] - alone).abs().max() <= 1e-5


def test_token_classification_takes_transformers_padding_free_batches():
    """`DataCollatorWithFlattening(return_flash_attn_kwargs=True)` batches: logits (1, total, num_labels) equal the
    padded batch's at the real tokens; the loss is the cross-entropy over the collator's labels."""
    model = _token_model().eval()
    ids, mask, _, _, _ = ragged_batch([5, 2, 4], seed=10)
    labels = torch.randint(0, 5, ids.shape)
    lengths = mask.sum(1).tolist()
    features = [dict(input_ids=ids[i, :n].tolist(), labels=labels[i, :n].tolist()) for i, n in enumerate(lengths)]
    batch = transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_tensors="pt")(features)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        flat = model(**batch)
    assert flat.logits.shape == (1, sum(lengths), 5)
    assert (flat.logits[0] - padded[mask.bool()]).abs().max() <= 1e-5
    ref = F.cross_entropy(flat.logits[0].double(), batch["labels"][0], ignore_index=-100)
    assert abs(flat.loss.item() - ref.item()) <= 1e-6


def test_token_classification_labels_are_checked():
    model = _token_model(num_labels=3)
    ids, mask, _, _, _ = ragged_batch([4, 2], seed=4)
    labels = torch.zeros_like(ids).masked_fill(mask == 0, -100)
    with pytest.raises(ValueError, match="num_labels=3"):
        model(input_ids=ids, attention_mask=mask, labels=labels.masked_fill(labels == 0, 3))
    with pytest.raises(ValueError, match="padding positions.*-100"):
        model(input_ids=ids, attention_mask=mask, labels=torch.zeros_like(ids))


def _qa_model():
    torch.manual_seed(5)
    return perturb_(BertForQuestionAnswering(tiny_config()))


def test_question_answering_loss_follows_transformers_rules():
    """The mean of start and end cross-entropy, each over the row's real tokens; positions past the input (clamped to
    seqlen, as transformers does) or at padding carry no loss."""
    model = _qa_model().train()
    ids, mask, _, types, _ = ragged_batch([8, 5, 6], seed=6)
    seqlen, lengths = ids.shape[1], mask.sum(1).tolist()
    start, end = torch.tensor([1, 2, 100]), torch.tensor([3, 6, 2])  # row 2's start: past the input; row 1's end: pad
    out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, start_positions=start, end_positions=end)
    assert isinstance(out, QuestionAnsweringModelOutput) and out.start_logits.shape == out.end_logits.shape == ids.shape
    assert out.start_logits[mask == 0].abs().max() == 0 and out.end_logits[mask == 0].abs().max() == 0
    s, e = out.start_logits.double(), out.end_logits.double()

    def nll(logits, i, pos):
        return -torch.log_softmax(logits[i, :lengths[i]], -1)[pos]

    ref_start = torch.stack([nll(s, i, start[i]) for i in (0, 1)]).mean()
    ref_end = torch.stack([nll(e, i, end[i]) for i in (0, 2)]).mean()
    assert start[2] > seqlen and lengths[1] <= end[1] < seqlen
    assert abs(out.loss.item() - (ref_start + ref_end).item() / 2) <= 1e-6
    out.loss.backward()
    assert torch.isfinite(model.qa_outputs.weight.grad).all() and model.qa_outputs.weight.grad.abs().sum() > 0
    loss, start_logits, end_logits = model.eval()(input_ids=ids, attention_mask=mask, start_positions=start,
                                                  end_positions=end, return_dict=False)
    assert start_logits.shape == ids.shape and loss.shape == ()


def test_question_answering_padded_equals_each_sequence_alone():
    """Logits at the real tokens and the loss (unlike stock BERT's, whose softmax includes the padding) do not change
    with the batch's padding."""
    model = _qa_model().eval()
    ids, mask, _, types, _ = ragged_batch([3, 7, 5], seed=7)
    start, end = torch.tensor([0, 4, 2]), torch.tensor([2, 6, 3])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, start_positions=start,
                    end_positions=end)
        losses = []
        for i, n in enumerate(mask.sum(1).tolist()):
            alone = model(input_ids=ids[i:i + 1, :n], token_type_ids=types[i:i + 1, :n], start_positions=start[i:i + 1],
                          end_positions=end[i:i + 1])
            assert (out.start_logits[i, :n] - alone.start_logits[0]).abs().max() <= 1e-5
            assert (out.end_logits[i, :n] - alone.end_logits[0]).abs().max() <= 1e-5
            losses.append(alone.loss)
    assert abs(out.loss.item() - torch.stack(losses).mean().item()) <= 1e-5


def test_question_answering_needs_two_labels():
    with pytest.raises(ValueError, match="num_labels must be 2"):
        BertForQuestionAnswering(tiny_config(num_labels=3))


def _choices(batch=2, n_choices=3, seed=8):
    """(batch, n_choices, seqlen) ids and 0/1 mask with a different length per choice."""
    lengths = [4 + (3 * i) % 5 for i in range(batch * n_choices)]
    ids, mask, _, types, _ = ragged_batch(lengths, seed=seed)
    shape = (batch, n_choices, ids.shape[1])
    return ids.reshape(shape), mask.reshape(shape), types.reshape(shape)


def test_multiple_choice_loss_grads_and_each_choice_alone():
    torch.manual_seed(9)
    model = perturb_(BertForMultipleChoice(tiny_config())).train()
    ids, mask, types = _choices()
    labels = torch.tensor([2, 0])
    out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    assert isinstance(out, MultipleChoiceModelOutput) and out.logits.shape == (2, 3)
    ref = F.cross_entropy(out.logits.double(), labels)
    assert abs(out.loss.item() - ref.item()) <= 1e-6
    out.loss.backward()
    assert torch.isfinite(model.classifier.weight.grad).all() and model.classifier.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        for b in range(2):
            for c in range(3):
                n = int(mask[b, c].sum())
                alone = model(input_ids=ids[b, c, :n][None, None], token_type_ids=types[b, c, :n][None, None]).logits
                assert abs(logits[b, c].item() - alone.item()) <= 1e-5
        embeds = model.bert.get_input_embeddings()(ids)  # (batch, n_choices, seqlen, hidden)
        from_embeds = model(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types).logits
    assert (from_embeds - logits).abs().max() <= 1e-5


def test_multiple_choice_bad_inputs_name_the_fix():
    model = BertForMultipleChoice(tiny_config())
    ids, mask, _ = _choices()
    with pytest.raises(ValueError, match=r"\(batch, num_choices, seqlen\)"):
        model(input_ids=ids[:, 0], attention_mask=mask[:, 0])
    with pytest.raises(ValueError, match="3 choices"):
        model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 3]))


@pytest.mark.parametrize("head", HEADS)
def test_each_head_equals_transformers_head_on_our_encoder(head):
    """transformers' own head class with our encoder put in its `bert` slot and our head weights: same logits at the
    real tokens and the same loss (its flattening, dropout, loss rules and -100 / out-of-span handling). QA rows are
    unpadded here: stock BERT's span softmax includes padding, ours does not."""
    torch.manual_seed(11)
    name = HEADS[head][1]
    kw = dict(num_labels=5) if head == "token" else {}
    ours = perturb_(getattr(__import__("mosaic_bert"), name)(tiny_config(**kw))).eval()
    stock = getattr(transformers, name)(transformers.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1,
                                                                 num_attention_heads=4, intermediate_size=48, **kw))
    stock.bert = ours.bert
    for module in ("classifier", "qa_outputs", "dropout"):
        if hasattr(ours, module):
            setattr(stock, module, getattr(ours, module))
    stock.eval()
    if head == "choice":
        ids, mask, types = _choices(seed=12)
        extra = dict(labels=torch.tensor([1, 2]))
    else:
        ids, mask, _, types, _ = ragged_batch([6, 3, 5] if head == "token" else [6, 6, 6], seed=12, extra_cols=0)
        extra = (dict(labels=torch.randint(0, 5, ids.shape).masked_fill(mask == 0, -100)) if head == "token" else
                 dict(start_positions=torch.tensor([1, 50, 2]), end_positions=torch.tensor([2, 3, 4])))
    with torch.no_grad():
        want = stock(input_ids=ids, attention_mask=mask, token_type_ids=types, **extra)
        got = ours(input_ids=ids, attention_mask=mask, token_type_ids=types, **extra)
    assert abs(got.loss.item() - want.loss.item()) <= 1e-5
    real = mask.bool() if head != "choice" else torch.ones(2, 3, dtype=torch.bool)
    for field in ("logits",) if head != "qa" else ("start_logits", "end_logits"):
        assert (getattr(got, field)[real] - getattr(want, field)[real]).abs().max() <= 1e-5


def test_token_classification_pipeline_runs_on_the_folder(folder):
    tagger = pipeline("token-classification", model=str(folder), trust_remote_code=True)
    assert type(tagger.model).__module__.startswith("transformers_modules")
    text = "MosaicBERT runs on unpadded tokens"
    entities = tagger(text)
    enc = tagger.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        probs = tagger.model(**enc).logits.softmax(-1)[0]
    assert len(entities) == enc["input_ids"].shape[1] - 2  # every word piece but [CLS] and [SEP] (no "O" label)
    for ent in entities:
        assert abs(ent["score"] - probs[ent["index"]].max().item()) <= 1e-5
        assert ent["entity"] == tagger.model.config.id2label[int(probs[ent["index"]].argmax())]
        assert text[ent["start"]:ent["end"]].lower() == ent["word"].replace("##", "")


def test_question_answering_on_the_folder_with_its_tokenizer(folder):
    """transformers 5 has no question-answering pipeline any more (removed in v5; "use text-generation"), so this
    does its work: a (question, context) pair through the folder's tokenizer, the best span inside the context."""
    model = AutoModelForQuestionAnswering.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    context = "The encoder removes padding once and runs every layer on the real tokens only."
    questions = ["What does the encoder remove?", "Where do the layers run?"]
    enc = tokenizer(questions, [context] * 2, padding=True, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")
    with torch.no_grad():
        out = model(**enc)
    for i in range(2):
        in_context = torch.tensor([s == 1 for s in enc.sequence_ids(i)])
        start = out.start_logits[i].masked_fill(~in_context, -1e4).argmax()
        end = start + out.end_logits[i, start:].masked_fill(~in_context[start:], -1e4).argmax()
        answer = context[offsets[i, start, 0]:offsets[i, end, 1]]
        assert answer and answer in context and in_context[start] and in_context[end]
    with pytest.raises(KeyError, match="question-answering"):  # the pipeline this replaces (if it returns: use it)
        pipeline("question-answering", model=model, tokenizer=tokenizer)


# ----------------------------------------------------------------------------------------------------------------------
# Heads MosaicBERT does not have


@pytest.mark.parametrize("auto", [AutoModelForPreTraining, AutoModelForNextSentencePrediction, AutoModelForCausalLM])
def test_heads_we_do_not_ship_fail_loudly(folder, auto):
    """From the folder, and with the model card's stock BertConfig as config= (which would otherwise let transformers
    fall back to its own BERT classes with a random encoder)."""
    with pytest.raises(ValueError, match="AutoModelForMaskedLM"):
        auto.from_pretrained(folder, trust_remote_code=True)
    stock = transformers.BertConfig.from_pretrained(folder)
    with pytest.raises(ValueError, match="AutoModelForMaskedLM"):
        auto.from_pretrained(folder, config=stock, trust_remote_code=True)
    with pytest.raises(ValueError, match="next-sentence-prediction"):
        BertForPreTraining(tiny_config())
