"""Dropout draws from the counter hash (`flash_attn_triton.dropout_draws`, `hash_dropout`) and the model's use of it
under torch.compile: the int32 tensor code against plain Python integers, eager against Inductor bit for bit, and the
statistics a dropout mask needs (keep rate, no correlation between halves, neighbours or seeds)."""

import pytest
import torch

from mosaic_bert.modeling import flash_attn_triton as fa

M32 = 0xFFFFFFFF


def _fmix32(x: int) -> int:
    """MurmurHash3's 32-bit finaliser on Python integers (unsigned, no overflow)."""
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & M32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & M32
    return x ^ (x >> 16)


def _draw(seed: int, counter: int, half: int) -> int:
    k1, k2 = seed & 0x7FFFFFFF, (seed >> 31) & 0x7FFFFFFF
    x = _fmix32((counter & 0x7FFFFFFF) ^ k1)
    x = _fmix32(x ^ k2 ^ (counter >> 31))
    return (x >> (16 * half)) & 0xFFFF


def test_draws_equal_the_python_integer_reference():
    counters = [0, 1, 2, 3, 1000, 2**31 - 1, 2**31, 2**31 + 5, 2**40 + 7]
    for seed in (0, 1, 2**31 - 1, 2**31, 2**62 - 1, 123456789012345):
        c = torch.tensor(counters)
        for half in (0, 1):
            got = fa.dropout_draws(torch.tensor([seed]), c, half).tolist()
            assert got == [_draw(seed, k, half) for k in counters], (seed, half)
    halves = torch.tensor([0, 1] * 4)
    c = torch.arange(8) // 2
    assert fa.dropout_draws(torch.tensor([77]), c, halves).tolist() == [_draw(77, k // 2, k % 2) for k in range(8)]


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_and_independence(p):
    n = 1 << 20
    x = torch.ones(n)
    y = fa.hash_dropout(x, p, torch.tensor([2024]))
    keep = y != 0
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(keep.float().mean().item() - (1 - p)) < 5 * sigma
    assert torch.allclose(y[keep], torch.full_like(y[keep], 1 / (1 - p)))
    k = keep.float()

    def corr(a, b):
        a, b = a - a.mean(), b - b.mean()
        return ((a * b).mean() / (a.std() * b.std())).item()

    assert abs(corr(k[0::2], k[1::2])) < 0.01  # the two halves of one hash
    assert abs(corr(k[:-2], k[2:])) < 0.01  # neighbouring counters
    other = fa.hash_dropout(x, p, torch.tensor([2025])) != 0  # the next seed
    assert abs(corr(k, other.float())) < 0.01
    assert fa.dropout_threshold(0.1) == 6554 and fa.dropout_threshold(0.0) == 0


def test_hash_dropout_rejects_bad_p_and_is_identity_at_zero():
    x = torch.randn(4, 3)
    assert fa.hash_dropout(x, 0.0) is x
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        fa.hash_dropout(x, 1.0)


def test_inductor_fuses_the_same_draws_eager_computes():
    """Compiled (Inductor, CPU) and eager give the same output and gradient, bit for bit."""
    torch._dynamo.reset()
    x = torch.randn(37, 96, requires_grad=True)
    seed = torch.tensor([987654321987])
    y = fa.hash_dropout(x, 0.1, seed)
    y.backward(torch.ones_like(y))
    x2 = x.detach().clone().requires_grad_(True)
    compiled = torch.compile(lambda t, s: fa.hash_dropout(t, 0.1, s), backend="inductor", fullgraph=True)
    y2 = compiled(x2, seed)
    y2.backward(torch.ones_like(y2))
    assert torch.equal(y, y2) and torch.equal(x.grad, x2.grad)
    assert torch.equal(x.grad, (y != 0).float() / 0.9)


def test_compiled_model_draws_hidden_dropout_from_the_hash():
    """Under torch.compile the embedding and attention-output dropouts are the hash's integer ops (no
    F.dropout left in the graph); eager keeps F.dropout."""
    from conftest import tiny_config
    from mosaic_bert import BertForMaskedLM
    from mosaic_bert.modeling import modeling_bert as mb

    torch.manual_seed(0)
    config = tiny_config(hidden_dropout_prob=0.1, attention_backend="triton")
    model = BertForMaskedLM(config).train()
    ids = torch.randint(1, 128, (2, 10))
    labels = torch.where(torch.rand(2, 10) < 0.5, ids, -100)
    labels[0, 0] = ids[0, 0]
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(input_ids=ids, labels=labels)
    targets = [str(n.target) for g in explained.graphs for n in g.graph.nodes]
    assert not any("dropout" in t and "geglu" not in t for t in targets), [t for t in targets if "dropout" in t]
    draws = sum("randint" in t for t in targets)
    assert draws == 1 + 2 * config.num_hidden_layers, draws  # embeddings, then attention output + GeGLU per layer
    calls = []
    eager_dropout = torch.nn.functional.dropout
    try:
        mb.F.dropout = lambda *a, **k: calls.append(1) or eager_dropout(*a, **k)
        model(input_ids=ids, labels=labels)
    finally:
        mb.F.dropout = eager_dropout
    assert len(calls) == 1 + config.num_hidden_layers


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_on_cuda_inductor_and_the_geglu_kernel_draw_what_the_cpu_draws():
    """Inductor's CUDA code for `hash_dropout` and the GeGLU kernel on CUDA give the CPU's masks, bit for bit."""
    seed = torch.tensor([31415926535])
    x = torch.randn(2048, 768)
    torch._dynamo.reset()
    compiled = torch.compile(lambda t, s: fa.hash_dropout(t, 0.1, s), backend="inductor", fullgraph=True)
    on_gpu = compiled(x.cuda().bfloat16(), seed.cuda())
    assert torch.equal((on_gpu != 0).cpu(), fa.hash_dropout(torch.ones_like(x), 0.1, seed) != 0)
    n, i = 1000, 3072
    gate_up = torch.randn(n, 2 * i, device="cuda", dtype=torch.bfloat16)
    h, mask = fa._geglu_fwd_impl(gate_up, seed.cuda(), 0.1)
    assert tuple(mask.shape) != (n, i)  # the kernels' packed mask
    assert torch.equal(fa.geglu_keep_mask(mask, n, i).cpu(), fa.geglu_keep_reference(seed, n, i, 0.1))
