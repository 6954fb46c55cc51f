"""Unpadding and repadding of token batches.

MosaicBERT removes padding once, right after the input, and runs every layer on the `(total_nnz, ...)` real tokens;
it puts padding back only at the output. The gathers and scatters here have hand-written backward passes: the
backward of a gather is a scatter into zeros (and vice versa), which autograd's generic indexing backward does less
cheaply.

`attention_mask` may be 0/1 (one sequence per row) or hold document ids (0 = padding, 1, 2, ... = the k-th
document packed into that row): then every document becomes its own sequence, so attention never crosses documents.
"""

from typing import NamedTuple

import torch


class _IndexFirstAxis(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(indices)
        ctx.first_axis_dim = input.shape[0]
        return input[indices]

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (indices,) = ctx.saved_tensors
        grad_input = grad_output.new_zeros((ctx.first_axis_dim, *grad_output.shape[1:]))
        grad_input[indices] = grad_output
        return grad_input, None


class _IndexPutFirstAxis(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: torch.Tensor, indices: torch.Tensor, first_axis_dim: int) -> torch.Tensor:
        ctx.save_for_backward(indices)
        output = values.new_zeros((first_axis_dim, *values.shape[1:]))
        output[indices] = values
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (indices,) = ctx.saved_tensors
        return grad_output[indices], None, None


def index_first_axis(input: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`input[indices]` along the first axis; backward scatters into zeros."""
    return _IndexFirstAxis.apply(input, indices)


def index_put_first_axis(values: torch.Tensor, indices: torch.Tensor, first_axis_dim: int) -> torch.Tensor:
    """A `(first_axis_dim, ...)` zero tensor with `values` written at `indices`; backward gathers."""
    return _IndexPutFirstAxis.apply(values, indices, first_axis_dim)


class Unpadded(NamedTuple):
    """Where the real tokens of a `(batch, seqlen)` grid are, grouped into sequences (rows or packed documents)."""

    indices: torch.Tensor  # (total_nnz,) flat positions in the (batch * seqlen) grid, each sequence contiguous
    cu_seqlens: torch.Tensor  # (n_seqs + 1,) int32 offsets of each sequence in the unpadded tokens
    max_seqlen: int  # length of the longest sequence
    batch: int
    seqlen: int


def unpad_mask(attention_mask: torch.Tensor) -> Unpadded:
    """Find the real tokens of `attention_mask` `(batch, seqlen)` (0/1, or document ids with 0 for padding).

    Empty rows and empty documents yield no sequence. The token order is row-major; with document ids, tokens are
    grouped by (row, document) so that each document is contiguous even if its ids are interleaved in the row.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, seqlen), got shape {tuple(attention_mask.shape)}")
    batch, seqlen = attention_mask.shape
    mask = attention_mask.to(torch.long)
    flat = mask.flatten()
    n_docs = int(mask.max()) if mask.numel() else 0
    if n_docs <= 1:
        indices = torch.nonzero(flat, as_tuple=False).flatten()
        seqlens = mask.ne(0).sum(dim=-1)
    else:
        # One sequence per (row, document id): sort the real tokens by (row, id, position).
        real = torch.nonzero(flat, as_tuple=False).flatten()
        row = real // seqlen
        key = (row * (n_docs + 1) + flat[real]) * seqlen + real % seqlen
        indices = real[torch.argsort(key)]
        seqlens = torch.bincount(row * (n_docs + 1) + flat[real], minlength=batch * (n_docs + 1))
    seqlens = seqlens[seqlens > 0].to(torch.int32)
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    max_seqlen = int(seqlens.max()) if seqlens.numel() else 0
    return Unpadded(indices, cu_seqlens, max_seqlen, batch, seqlen)


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor):
    """`(batch, seqlen, ...)` → `(total_nnz, ...)` plus `indices, cu_seqlens, max_seqlen` (flash-attn's contract)."""
    u = unpad_mask(attention_mask)
    flat = hidden_states.reshape(u.batch * u.seqlen, *hidden_states.shape[2:])
    return index_first_axis(flat, u.indices), u.indices, u.cu_seqlens, u.max_seqlen


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """`(total_nnz, ...)` → `(batch, seqlen, ...)` with zeros at the padding."""
    out = index_put_first_axis(hidden_states, indices, batch * seqlen)
    return out.view(batch, seqlen, *hidden_states.shape[1:])


__all__ = [
    "Unpadded",
    "index_first_axis",
    "index_put_first_axis",
    "pad_input",
    "unpad_input",
    "unpad_mask",
]
