"""Unpadding helpers against plain PyTorch indexing (values and gradients)."""

import torch

from mosaic_bert.modeling.bert_padding import (
    full_layout,
    gather_tokens,
    index_first_axis,
    index_put_first_axis,
    pad_input,
    unpad_input,
    unpad_mask,
)


def test_gathers_and_scatters_match_autograd_indexing():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([7, 0, 3, 9])
    w = torch.randn(4, 3, 4, generator=g, dtype=torch.float64)
    (index_first_axis(x, idx) * w).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    (x[idx] * w).sum().backward()
    assert torch.equal(index_first_axis(x, idx), x[idx]) and torch.equal(ours, x.grad)

    v = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    out = index_put_first_axis(v, idx, 10)
    ref = torch.zeros(10, 5, dtype=torch.float64).index_put((idx,), v)
    assert torch.equal(out, ref)
    w2 = torch.randn(10, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: index_put_first_axis(t, idx, 10) * w2, (v,))


def test_unpad_pad_round_trip_and_sequences():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    x = torch.randn(3, 4, 2)
    flat, indices, cu, max_len = unpad_input(x, mask)
    assert flat.shape == (7, 2) and cu.tolist() == [0, 3, 7] and max_len == 4 and cu.dtype == torch.int32
    back = pad_input(flat, indices, 3, 4)
    assert torch.equal(back[mask.bool()], x[mask.bool()]) and back[~mask.bool()].abs().sum() == 0


def test_document_ids_become_contiguous_sequences():
    # document ids, even interleaved, are grouped per (row, id) in position order
    mask = torch.tensor([[1, 1, 2, 2, 2, 0], [1, 2, 1, 0, 0, 0]])
    u = unpad_mask(mask)
    assert u.cu_seqlens.tolist() == [0, 2, 5, 7, 8]
    assert u.max_seqlen == 6  # a bound that costs no sync: the padded length, unless given
    assert unpad_mask(mask, max_seqlen=3).max_seqlen == 3
    assert u.indices.tolist() == [0, 1, 2, 3, 4, 6, 8, 7]


def test_all_padding_gives_no_sequences_and_full_layout_needs_no_gather():
    u = unpad_mask(torch.zeros(2, 3, dtype=torch.long))
    assert u.indices.numel() == 0 and u.cu_seqlens.tolist() == [0]
    f = full_layout(2, 3, "cpu")
    assert f.indices is None and f.cu_seqlens.tolist() == [0, 3, 6] and f.max_seqlen == 3
    x = torch.randn(2, 3, 4)
    assert torch.equal(pad_input(gather_tokens(x, None), None, 2, 3), x)
