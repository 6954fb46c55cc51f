"""The whole model on a GPU: the Triton attention path against the PyTorch path (skipped without CUDA)."""

import copy

import pytest
import torch

from conftest import requires_cuda
from mosaic_bert import BertConfig, BertForMaskedLM
from mosaic_bert.modeling.flash_attn_triton import is_available as triton_available

pytestmark = [requires_cuda, pytest.mark.gpu]


def _batch(batch, max_len, vocab, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (batch,), generator=g)
    lengths[0] = max_len
    ids = torch.randint(5, vocab, (batch, max_len), generator=g)
    mask = (torch.arange(max_len)[None] < lengths[:, None]).long()
    ids = ids * mask
    labels = torch.where((torch.rand(batch, max_len, generator=g) < 0.3) & mask.bool(), ids, -100)
    tt = (torch.arange(max_len)[None] >= (lengths[:, None] // 2)).long() * mask
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=mask, token_type_ids=tt,
                                              labels=labels).items()}


def _step(model, batch):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(**batch)
    out.loss.backward()
    return out.loss.float(), out.logits.float(), {n: p.grad.float() for n, p in model.named_parameters()}


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.skipif(not triton_available(), reason="needs triton")
@pytest.mark.parametrize("max_len", [128, 512])
def test_triton_path_matches_pytorch_path_in_a_training_step(max_len):
    torch.manual_seed(0)
    # no dropout: both models must see the same function (hidden dropout would draw different masks)
    cfg = BertConfig(num_hidden_layers=4, attention_backend="sdpa", hidden_dropout_prob=0.0)
    ref_model = BertForMaskedLM(cfg).cuda().train()
    fast_model = copy.deepcopy(ref_model)
    fast_model.config.attention_backend = "triton"
    fp32_model = copy.deepcopy(ref_model)
    batch = _batch(32, max_len, cfg.vocab_size, "cuda")

    loss_t, logits_t, grads_t = _step(fast_model, batch)
    loss_s, logits_s, grads_s = _step(ref_model, batch)
    # fp32 reference without autocast: both bf16 paths must be about as close to it as each other
    fp32_model.zero_grad()
    out = fp32_model(**batch)
    out.loss.backward()
    loss_f = out.loss
    grads_f = {n: p.grad for n, p in fp32_model.named_parameters()}

    assert abs(loss_t.item() - loss_s.item()) < 2e-2
    assert _rel(logits_t, logits_s) < 2e-2
    worst_t = max(_rel(grads_t[n], grads_f[n]) for n in grads_f)
    worst_s = max(_rel(grads_s[n], grads_f[n]) for n in grads_f)
    worst_ts = max(_rel(grads_t[n], grads_s[n]) for n in grads_f)
    print(f"L={max_len} loss triton {loss_t.item():.5f} sdpa {loss_s.item():.5f} fp32 {loss_f.item():.5f}; "
          f"worst grad rel err vs fp32: triton {worst_t:.2e} sdpa {worst_s:.2e}; triton vs sdpa {worst_ts:.2e}")
    assert worst_ts < 5e-2
    assert worst_t < max(2 * worst_s, 2e-2)


@pytest.mark.skipif(not triton_available(), reason="needs triton")
def test_auto_backend_is_triton_on_cuda_bf16_and_padding_invariant():
    from mosaic_bert.modeling.modeling_bert import resolve_attention_backend

    cfg = BertConfig(num_hidden_layers=2)
    assert resolve_attention_backend(cfg, torch.device("cuda"), torch.bfloat16, 0.0) == "triton"
    assert resolve_attention_backend(cfg, torch.device("cuda"), torch.bfloat16, 0.1) != "triton"
    torch.manual_seed(0)
    model = BertForMaskedLM(cfg).cuda().eval()
    b = _batch(4, 96, cfg.vocab_size, "cuda", seed=3)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        full = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
        n = int(b["attention_mask"][1].sum())
        alone = model(input_ids=b["input_ids"][1:2, :n]).logits.float()
    assert _rel(full[1, :n], alone[0]) < 1e-2


def test_cpu_and_gpu_agree_in_fp32():
    torch.manual_seed(0)
    cfg = BertConfig(num_hidden_layers=2, attention_backend="sdpa")
    model = BertForMaskedLM(cfg).eval()
    b = _batch(4, 64, cfg.vocab_size, "cpu", seed=5)
    b.pop("labels")
    with torch.no_grad():
        cpu = model(**b).logits
        gpu = model.cuda()(**{k: v.cuda() for k, v in b.items()}).logits.cpu()
    assert _rel(gpu, cpu) < 1e-4


@pytest.mark.skipif(not triton_available(), reason="needs triton")
def test_padding_free_inputs_equal_padded_on_gpu():
    """The collator's layouts (padding-free, or padded with a CPU-side unpadding) give the padded batch's outputs."""
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(num_hidden_layers=2, check_inputs=False)).cuda().eval()
    b = _batch(8, 128, model.config.vocab_size, "cuda", seed=7)
    real = b["attention_mask"].bool()
    lens = real.sum(1).cpu()
    cu = torch.cat([lens.new_zeros(1), lens.cumsum(0)]).to(torch.int32)  # on the CPU, as a collator makes it
    free = dict(cu_seq_lens_q=cu, max_length_q=int(lens.max()))
    indices = real.flatten().nonzero().flatten().cpu()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        padded = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
        flat = model(input_ids=b["input_ids"][real][None], **free).logits.float()
        pre = model(input_ids=b["input_ids"], indices=indices, **free).logits.float()
    assert _rel(flat[0], padded[real]) < 1e-2 and _rel(pre[real], padded[real]) < 1e-2
