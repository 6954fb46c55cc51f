"""transformers' attention switch (`attn_implementation=`, `set_attn_implementation`), `output_attentions` and
`hidden_states`, against an independent float64 reference: the encoder written densely on the padded grid (HF BERT's
way: every row padded to seqlen, padding and other documents masked in the scores), not on unpadded tokens."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from conftest import perturb_, requires_cuda, tiny_config
from mosaic_bert import BertForMaskedLM, BertModel
from mosaic_bert.modeling import modeling_bert as mb
from mosaic_bert.modeling.bert_padding import bucketed_layout
from mosaic_bert.modeling.flash_attn_triton import is_available as triton_is_available

TOL = 2e-5


# ----------------------------------------------------------------------------------------------------------------------
# The float64 reference


def _slopes(n_heads: int) -> torch.Tensor:
    assert n_heads & (n_heads - 1) == 0, "the reference knows the power-of-two rule only"
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / n_heads) for i in range(n_heads)], dtype=torch.float64)


def _same_sequence(mask: torch.Tensor) -> torch.Tensor:
    """(batch, L, L) bool: query i and key j are tokens of the same sequence (0/1 mask or packed document ids)."""
    return (mask[:, :, None] == mask[:, None, :]) & (mask[:, :, None] > 0)


class Reference:
    """The encoder in float64 on the padded (batch, L) grid, from the model's state dict."""

    def __init__(self, model, alibi: bool = True):
        self.p = {k: v.detach().double() for k, v in model.state_dict().items()}
        self.cfg = model.config
        self.heads = model.config.num_attention_heads
        self.alibi = alibi

    def _ln(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.p[name + ".weight"], self.p[name + ".bias"], self.cfg.layer_norm_eps)

    def _lin(self, x, name, bias=True):
        return x @ self.p[name + ".weight"].T + (self.p[name + ".bias"] if bias else 0)

    def embed(self, ids, types):
        x = self.p["embeddings.word_embeddings.weight"][ids] + self.p["embeddings.token_type_embeddings.weight"][types]
        return self._ln(x, "embeddings.LayerNorm")

    def layer(self, i, x, mask):
        """One layer on (batch, L, hidden): the output and the attention probabilities (batch, heads, L, L)."""
        pre = f"encoder.layer.{i}."
        b, L, hid = x.shape
        d = hid // self.heads
        q, k, v = self._lin(x, pre + "attention.self.Wqkv").view(b, L, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        pos = torch.arange(L, dtype=torch.float64)
        alibi = -_slopes(self.heads)[:, None, None] * (pos[None, :] - pos[:, None]).abs() * self.alibi
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + alibi
        allowed = _same_sequence(mask)[:, None]
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.nan_to_num(scores.softmax(-1)) * allowed  # rows of padding queries: all zero
        ctx = (probs @ v).transpose(1, 2).reshape(b, L, hid)
        x = self._ln(self._lin(ctx, pre + "attention.output.dense") + x, pre + "attention.output.LayerNorm")
        gate, up = self._lin(x, pre + "mlp.gated_layers", bias=False).chunk(2, dim=-1)
        x = self._ln(self._lin(F.gelu(gate) * up, pre + "mlp.wo") + x, pre + "mlp.layernorm")
        return x, probs

    def run(self, ids, mask, types=None, start=0, x=None):
        """(hidden states: each layer's input and the last output, zero at padding; attention probabilities)."""
        real = (mask > 0)[..., None].double()
        x = self.embed(ids, torch.zeros_like(ids) if types is None else types) if x is None else x
        hidden, attentions = [x * real], []
        for i in range(start, self.cfg.num_hidden_layers):
            x, probs = self.layer(i, x, mask)
            hidden.append(x * real)
            attentions.append(probs)
        return hidden, attentions


def _maxdiff(a, b):
    return (a.double() - b.double()).abs().max().item()


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 128, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return ids, mask


def _encoder(**overrides):
    torch.manual_seed(0)
    return perturb_(BertModel(tiny_config(**overrides))).eval()


# ----------------------------------------------------------------------------------------------------------------------
# attn_implementation


@pytest.fixture
def called(monkeypatch):
    """Spy on the attention table: the keys of ATTENTION_FUNCTIONS that ran."""
    seen = []
    for key, fn in list(mb.ATTENTION_FUNCTIONS.items()):
        def spy(*args, _key=key, _fn=fn, **kwargs):
            seen.append(_key)
            return _fn(*args, **kwargs)

        monkeypatch.setitem(mb.ATTENTION_FUNCTIONS, key, spy)
    return seen


# name -> the table entry it runs on CPU in fp32 (mosaic_auto: SDPA off CUDA)
ON_CPU = {"eager": "eager", "sdpa": "sdpa", "mosaic_triton": "triton", "mosaic_auto": "sdpa"}


@pytest.mark.parametrize("how", ["from_pretrained", "set_attn_implementation"])
@pytest.mark.parametrize("name", list(ON_CPU))
def test_attn_implementation_selects_that_function_and_matches_float64(name, how, called, tmp_path):
    _encoder().save_pretrained(tmp_path)
    if how == "from_pretrained":
        model = BertModel.from_pretrained(tmp_path, attn_implementation=name).eval()
    else:
        model = BertModel.from_pretrained(tmp_path, attn_implementation="eager" if name != "eager" else "sdpa").eval()
        model.set_attn_implementation(name)
    assert model.config._attn_implementation == name
    assert model.config.attention_backend == mb.ATTN_IMPLEMENTATIONS[name]  # the one setting the forward reads
    ids, mask = _batch()
    called.clear()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert called == [ON_CPU[name]] * model.config.num_hidden_layers
    ref = Reference(model).run(ids, mask)[0][-1]
    assert _maxdiff(out, ref) < TOL


ON_CUDA = {"mosaic_auto": "triton", "mosaic_triton": "triton", "flash_attention_2": "flash_attn", "sdpa": "sdpa",
           "eager": "eager"}


@requires_cuda
@pytest.mark.parametrize("name", list(ON_CUDA))
def test_on_cuda_each_name_runs_its_function_in_bf16(name, called, tmp_path):
    if ON_CUDA[name] == "flash_attn" and mb.fa2_varlen_qkvpacked is None:
        pytest.skip("flash-attn is not installed")
    if ON_CUDA[name] == "triton" and not triton_is_available():
        pytest.skip("triton is not installed")
    _encoder().save_pretrained(tmp_path)
    model = BertModel.from_pretrained(tmp_path, attn_implementation=name).cuda().eval()
    ids, mask = _batch()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(input_ids=ids.cuda(), attention_mask=mask.cuda()).last_hidden_state.cpu()
    assert called == [ON_CUDA[name]] * model.config.num_hidden_layers
    ref = Reference(model.cpu()).run(ids, mask)[0][-1]
    assert (out.double() - ref).norm() / ref.norm() < 2e-2  # bf16 activations


def test_default_is_the_saved_attention_backend(called, tmp_path):
    """Old configs with `attention_backend` keep working: it names the implementation when none is requested, and
    a requested one wins."""
    _encoder(attention_backend="eager").save_pretrained(tmp_path)
    model = BertModel.from_pretrained(tmp_path)
    assert model.config._attn_implementation == "eager"
    remote = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)  # the folder's own copy of the code
    assert remote.config._attn_implementation == "eager" and type(remote).__module__ != BertModel.__module__
    assert BertModel(tiny_config()).config._attn_implementation == "mosaic_auto"  # the default: Triton on CUDA
    ids, mask = _batch()
    model(input_ids=ids, attention_mask=mask)
    assert set(called) == {"eager"}
    called.clear()
    BertModel.from_pretrained(tmp_path, attn_implementation="sdpa")(input_ids=ids, attention_mask=mask)
    assert set(called) == {"sdpa"}
    # attention_backend edited by hand still decides, and the next switch overrides it
    model.config.attention_backend = "sdpa"
    called.clear()
    model(input_ids=ids, attention_mask=mask)
    model.set_attn_implementation("eager")
    model(input_ids=ids, attention_mask=mask)
    assert called == ["sdpa", "sdpa", "eager", "eager"]


def test_unsupported_attn_implementations_are_refused_with_the_choices(tmp_path):
    _encoder().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="mosaic_auto.*mosaic_triton"):
        BertModel.from_pretrained(tmp_path, attn_implementation="flex_attention")
    model = BertModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not supported by MosaicBERT"):
        model.set_attn_implementation("paged|eager")
    if mb.fa2_varlen_qkvpacked is None:  # flash-attn not installed: transformers' own check says so
        with pytest.raises((ImportError, ValueError)):
            BertModel.from_pretrained(tmp_path, attn_implementation="flash_attention_2")


def test_our_names_are_registered_with_transformers_and_refuse_other_models():
    assert {"mosaic_auto", "mosaic_triton"} <= set(ALL_ATTENTION_FUNCTIONS.valid_keys())
    fn = ALL_ATTENTION_FUNCTIONS["mosaic_triton"]
    with pytest.raises(ValueError, match="only MosaicBERT models"):
        fn(torch.nn.Linear(1, 1), None, None, None, None)


# ----------------------------------------------------------------------------------------------------------------------
# output_attentions and hidden_states


@pytest.mark.parametrize("packed", [False, True])
def test_attentions_equal_float64_softmax_with_alibi_and_mask(packed):
    model = _encoder(attention_backend="eager")
    ids, mask = _batch()
    if packed:  # row 0 holds three documents: attention never crosses them
        mask[0] = torch.tensor([1, 1, 1, 2, 2, 3, 3, 3, 3])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    hidden, attentions = Reference(model).run(ids, mask)
    assert len(out.attentions) == model.config.num_hidden_layers
    for got, want in zip(out.attentions, attentions):
        assert got.shape == (3, 4, 9, 9)
        assert _maxdiff(got, want) < TOL
    assert _maxdiff(out.last_hidden_state, hidden[-1]) < TOL
    # the check can fail: without ALiBi the probabilities differ
    assert _maxdiff(out.attentions[0], Reference(model, alibi=False).run(ids, mask)[1][0]) > 1e-3


def test_output_attentions_on_other_paths_runs_eager_for_that_call(called, caplog):
    model = _encoder(attention_backend="sdpa")
    ids, mask = _batch()
    logging.Logger.warning_once.cache_clear()  # transformers' once-only warnings: this test wants to see it
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).last_hidden_state
        with caplog.at_level("WARNING"):
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True, return_dict=False)
    assert called == ["sdpa"] * 2  # the recording eager path is not the table's entry
    assert "output_attentions=True" in caplog.text
    last, _pooled, attentions = out
    assert len(attentions) == 2 and _maxdiff(last, plain) < 1e-5
    assert _maxdiff(attentions[1], Reference(model).run(ids, mask)[1][1]) < TOL


def test_hidden_states_equal_float64_reference_and_tuple_order():
    torch.manual_seed(0)
    model = perturb_(BertForMaskedLM(tiny_config())).eval()
    ids, mask = _batch(1)
    types = (torch.arange(9)[None] >= 4).long() * mask
    with torch.no_grad():
        out = model.bert(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True,
                         output_attentions=True)
        tup = model.bert(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True,
                         output_attentions=True, return_dict=False)
        mlm = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True,
                    return_dict=False)
    ref_hidden, _ = Reference(model.bert).run(ids, mask, types)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    for got, want in zip(out.hidden_states, ref_hidden):
        assert _maxdiff(got, want) < TOL
    assert out.hidden_states[-1] is out.last_hidden_state  # as HF BERT: the last hidden state is the output
    assert len(tup) == 3  # (last_hidden_state, hidden_states, attentions): no pooler in the MLM model
    assert torch.equal(tup[0], out.last_hidden_state)
    assert all(torch.equal(a, b) for a, b in zip(tup[1], out.hidden_states))
    assert all(torch.equal(a, b) for a, b in zip(tup[2], out.attentions))
    assert len(mlm) == 3 and len(mlm[1]) == 3 and len(mlm[2]) == 2  # (logits, hidden_states, attentions)


@pytest.mark.parametrize("layout", ["padded", "padding_free"])
def test_hidden_states_are_on_the_autograd_path(layout):
    """`hidden_states[k].retain_grad()` then backward fills their grads, equal to the float64 reference's gradient
    of the same loss with respect to that layer's input."""
    model = _encoder()
    ids, mask = _batch(2)
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(*ids.shape, 32, generator=g, dtype=torch.float64)
    if layout == "padded":
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        for a in out.attentions:
            a.retain_grad()
    else:  # (1, total) tokens; compared with the reference on the padded grid at the real tokens
        lengths = mask.sum(1)
        cu = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).int()])
        out = model(input_ids=ids[mask.bool()][None], cu_seq_lens_q=cu, max_length_q=int(lengths.max()),
                    output_hidden_states=True)
    for h in out.hidden_states:
        h.retain_grad()
    real = (mask > 0)[..., None]
    if layout == "padded":
        loss = (out.last_hidden_state.double() * weight * real).sum()
    else:
        loss = (out.last_hidden_state[0].double() * weight[mask.bool()]).sum()
    loss.backward()
    reference = Reference(model)
    for k, h in enumerate(out.hidden_states):
        assert h.grad is not None, f"hidden_states[{k}] is not on the autograd path"
        start = h.detach().double()
        if layout == "padding_free":
            grid = torch.zeros(*ids.shape, 32, dtype=torch.float64)
            grid[mask.bool()] = start[0]
            start = grid
        start.requires_grad_(True)
        last = reference.run(ids, mask, start=k, x=start)[0][-1]
        (want,) = torch.autograd.grad((last * weight * real).sum(), start)
        got = h.grad if layout == "padded" else h.grad[0]
        want = want if layout == "padded" else want[mask.bool()]
        assert _maxdiff(got, want) < 1e-4 * max(1.0, want.abs().max().item()), k
    if layout == "padded":  # the attention probabilities are on the path too: gradient at every same-sequence pair
        same = _same_sequence(mask)[:, None].expand_as(out.attentions[0])
        for a in out.attentions:
            assert a.grad is not None and (a.grad[same] != 0).float().mean() > 0.9 and not a.grad[~same].any()


def test_attentions_and_hidden_states_keep_the_input_layout():
    """The collator-made unpadding (with filler tokens) and padding-free inputs give the padded batch's attentions
    and hidden states, in their own layout: (batch, heads, seqlen, seqlen) and (1, heads, total, total)."""
    model = _encoder(attention_backend="eager")
    ids, mask = _batch(3)
    kw = dict(output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, **kw)
        bucketed = model(input_ids=ids, attention_mask=mask, **bucketed_layout(mask, token_multiple=16), **kw)
        lengths = mask.sum(1)
        cu = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).int()])
        free = model(input_ids=ids[mask.bool()][None], cu_seq_lens_q=cu, max_length_q=int(lengths.max()), **kw)
    for a, b in zip(padded.attentions + padded.hidden_states, bucketed.attentions + bucketed.hidden_states):
        assert a.shape == b.shape and _maxdiff(a, b) < 1e-6
    starts = cu.tolist()
    for a, f in zip(padded.attentions, free.attentions):
        assert f.shape == (1, 4, int(cu[-1]), int(cu[-1]))
        for row, n in enumerate(lengths.tolist()):
            s = starts[row]
            block = f[0, :, s : s + n, s : s + n]
            assert _maxdiff(block, a[row, :, :n, :n]) < 1e-6
            assert f[0, :, s : s + n].sum() == pytest.approx(block.sum().item())  # nothing outside its block
