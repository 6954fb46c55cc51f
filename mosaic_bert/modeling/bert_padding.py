"""Unpadding and repadding of token batches.

MosaicBERT removes padding once, right after the input, and runs every layer on the `(total_nnz, ...)` real tokens;
it puts padding back only at the output. The gathers and scatters here have hand-written backward passes: the
backward of a gather is a scatter into zeros (and vice versa), which autograd's generic indexing backward does less
cheaply.

`attention_mask` may be 0/1 (one sequence per row) or hold document ids (0 = padding, 1, 2, ... = the k-th
document packed into that row): then every document becomes its own sequence, so attention never crosses documents.
"""

from typing import NamedTuple, Optional

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

    indices: Optional[torch.Tensor]  # (total_nnz,) flat positions in the (batch * seqlen) grid; None: every position
    cu_seqlens: torch.Tensor  # (n_seqs + 1,) int32 offsets of each sequence in the unpadded tokens
    max_seqlen: int  # an upper bound on the sequence lengths (zero-length sequences are allowed)
    batch: int
    seqlen: int


def unpad_mask(attention_mask: torch.Tensor, max_seqlen: Optional[int] = None) -> Unpadded:
    """Find the real tokens of `attention_mask` `(batch, seqlen)` (0/1, or document ids with 0 for padding).

    One code path for both kinds of mask, with no host sync of its own beyond the two data-dependent sizes (the
    number of real tokens and of sequences; unbacked sizes under torch.compile/torch.export). Empty rows and empty
    documents yield no sequence. The token order is row-major; with document ids, tokens are grouped by
    (row, document) so that each document is contiguous even if its ids are interleaved in the row. `max_seqlen`
    defaults to the padded length `seqlen`, a bound that costs no sync.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, seqlen), got shape {tuple(attention_mask.shape)}")
    batch, seqlen = attention_mask.shape
    flat = attention_mask.reshape(-1).to(torch.long)
    real = torch.nonzero(flat, as_tuple=False).flatten()  # (total_nnz,) row-major
    row = real // seqlen
    col = real - row * seqlen  # not `real % seqlen`: the ONNX exporter cannot take a symbolic remainder
    group = row * 2**32 + flat[real]  # one value per (row, document)
    order = torch.argsort(group * seqlen + col)  # unique keys; the identity for 0/1 masks
    indices, group = real[order], group[order]
    starts = group != torch.cat([group[:1] - 1, group[:-1]])  # first token of each sequence
    seq_starts = torch.nonzero(starts, as_tuple=False).flatten()
    total = torch.full((1,), indices.shape[0], dtype=seq_starts.dtype, device=seq_starts.device)
    cu_seqlens = torch.cat([seq_starts, total]).to(torch.int32)
    return Unpadded(indices, cu_seqlens, seqlen if max_seqlen is None else max_seqlen, batch, seqlen)


def full_layout(batch: int, seqlen: int, device) -> Unpadded:
    """Every position is a token: one sequence per row, no gather (static sizes, no sync)."""
    cu_seqlens = torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=device)
    return Unpadded(None, cu_seqlens, seqlen, batch, seqlen)


def gather_tokens(x: torch.Tensor, indices: Optional[torch.Tensor], fill_row: bool = False) -> torch.Tensor:
    """`(batch, seqlen, ...)` → `(total_nnz, ...)` at `indices` (all positions when None). With `fill_row`, index
    `batch * seqlen` is allowed and reads zeros (a filler token of a bucketed layout, see `bucketed_layout`)."""
    flat = x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    if indices is None:
        return flat
    if fill_row:
        flat = torch.cat([flat, flat.new_zeros((1, *flat.shape[1:]))])
    return index_first_axis(flat, indices)


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor):
    """`(batch, seqlen, ...)` → `(total_nnz, ...)` plus `indices, cu_seqlens, max_seqlen` (flash-attn's contract)."""
    u = unpad_mask(attention_mask)
    flat = hidden_states.reshape(u.batch * u.seqlen, *hidden_states.shape[2:])
    return index_first_axis(flat, u.indices), u.indices, u.cu_seqlens, u.max_seqlen


def pad_input(hidden_states: torch.Tensor, indices: Optional[torch.Tensor], batch: int, seqlen: int,
              fill_row: bool = False) -> torch.Tensor:
    """`(total_nnz, ...)` → `(batch, seqlen, ...)` with zeros at the padding (a view when `indices` is None). With
    `fill_row`, rows at index `batch * seqlen` (filler tokens of a bucketed layout) are dropped."""
    if indices is None:
        return hidden_states.view(batch, seqlen, *hidden_states.shape[1:])
    n = batch * seqlen
    out = index_put_first_axis(hidden_states, indices, n + 1 if fill_row else n)
    return out[:n].view(batch, seqlen, *hidden_states.shape[1:])


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


def bucketed_layout(attention_mask: torch.Tensor, labels: Optional[torch.Tensor] = None, *, token_multiple: int = 128,
                    label_multiple: int = 64, max_seqlen: Optional[int] = None) -> dict:
    """The unpadding of a padded CPU batch with bucketed sizes, for a data collator: the model then sees only a few
    distinct shapes (no recompiles, CUDA graphs possible) and no data-dependent size at all. Pure function, CPU only.
    Filler tokens are real work (every matmul runs on them): a finer `token_multiple` wastes less, a coarser one
    gives fewer shapes (one CUDA graph each under mode="reduce-overhead"; one compiled graph for all of them when
    the sizes are marked dynamic).

    Returns the model's keyword inputs `indices`, `cu_seq_lens_q`, `max_length_q` and, with `labels`,
    `masked_positions`:
    - `indices` (T,) int64, T = the real-token count rounded up to `token_multiple`: flat positions of the real tokens
      in the (batch * seqlen) grid, in the model's order (`unpad_mask`), then filler tokens marked `batch * seqlen`
      (they read token id 0 and type 0 and are dropped from every output);
    - `cu_seq_lens_q` int32 of fixed length per (batch, token_multiple, max_seqlen) for 0/1 masks: the real
      sequences, zero-length slots up to `batch` sequences, then ceil(token_multiple / max_seqlen) filler segments
      of at most `max_seqlen` tokens each (attention never mixes filler and real tokens);
    - `max_length_q`: `max_seqlen` (default: the padded length; a Python int, so no guard on the data);
    - `masked_positions` (C,) int64, C = the labelled count (labels != -100) rounded up to `label_multiple`: flat
      positions of the labelled tokens in row-major order, then `batch * seqlen` (target -100, no loss).
    The model's outputs on real tokens equal those of the plain padded batch.
    """
    from_mask = unpad_mask(attention_mask.cpu())
    batch, seqlen = from_mask.batch, from_mask.seqlen
    max_len = seqlen if max_seqlen is None else int(max_seqlen)
    if max_len < 1:
        raise ValueError(f"max_seqlen must be >= 1, got {max_len}")
    real = from_mask.indices
    total = real.shape[0]
    bucket = _round_up(max(total, 1), token_multiple)
    n_fill = bucket - total
    grid = batch * seqlen
    indices = torch.cat([real, torch.full((n_fill,), grid, dtype=real.dtype)])
    cu_real = from_mask.cu_seqlens.to(torch.int64)
    n_seqs = cu_real.shape[0] - 1
    slots = _round_up(max(n_seqs, 1), max(batch, 1))  # = batch for 0/1 masks: a fixed length
    fill_segs = -(-max(token_multiple, 1) // max_len)
    cu = torch.full((slots + fill_segs + 1,), total, dtype=torch.int64)
    cu[: n_seqs + 1] = cu_real
    fill_ends = total + torch.clamp(torch.arange(1, fill_segs + 1) * max_len, max=n_fill)
    cu[slots + 1:] = fill_ends
    out = dict(indices=indices, cu_seq_lens_q=cu.to(torch.int32), max_length_q=max_len)
    if labels is not None:
        picked = torch.nonzero(labels.cpu().reshape(-1) != -100, as_tuple=False).flatten()
        cap = _round_up(max(picked.shape[0], 1), label_multiple)
        out["masked_positions"] = torch.cat([picked, torch.full((cap - picked.shape[0],), grid, dtype=picked.dtype)])
    return out


__all__ = [
    "Unpadded",
    "bucketed_layout",
    "full_layout",
    "gather_tokens",
    "index_first_axis",
    "index_put_first_axis",
    "pad_input",
    "unpad_input",
    "unpad_mask",
]
