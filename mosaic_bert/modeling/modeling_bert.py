"""MosaicBERT: a BERT encoder built for fast pretraining (Portes et al., NeurIPS 2023).

Read top to bottom, this file is the whole model:

    input_ids (batch, seqlen) --unpad once--> (total_nnz,)
      -> embeddings: word + token type, LayerNorm, dropout            (total_nnz, hidden)     [no position embeddings]
      -> N x layer: attention with ALiBi on cu_seqlens, post-LN;
                    GeGLU MLP, post-LN                                 (total_nnz, hidden)
      -> repad at the end                                              (batch, seqlen, hidden)

Inputs come padded (`attention_mask`), or padding-free in transformers' convention (`input_ids` (1, total) with
`cu_seq_lens_q`/`max_length_q`, or `position_ids`), or padded with the unpadding precomputed by the collator
(`indices` + `cu_seq_lens_q` + `max_length_q`); see `_token_layout`. Given their sizes, the forward never asks the
GPU for anything, so `torch.compile(model, fullgraph=True)` and `torch.export` capture it whole.

Attention runs on the unpadded tokens through one table of implementations (`ATTENTION_FUNCTIONS`), chosen in one
function (`resolve_attention_backend`): the Triton kernel as the custom op `torch.ops.mosaic_bert.varlen_alibi_attn_*`
(`flash_attn_triton.py`) on CUDA in fp16/bf16, else PyTorch SDPA or eager paths that pad each sequence. ALiBi adds
-slope_h * |i - j| to the scores and is computed on the fly from per-head slopes, so nothing of size L^2 is model
state and any input length works. The MLM head runs only at the masked positions when `labels` are given.

Parameter names follow the original MosaicBERT checkpoints (`bert.encoder.layer.N.attention.self.Wqkv`,
`mlp.gated_layers`, `mlp.wo`, `mlp.layernorm`, ...). Config fields MosaicBERT adds are read with defaults, so a stock
`transformers.BertConfig` works too.
"""

import functools
import json
import math
import os
import sys
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import AttentionInterface
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import logging

from .bert_padding import (
    Unpadded,
    full_layout,
    gather_tokens,
    index_first_axis,
    index_put_first_axis,
    pad_input,
    unpad_mask,
)
from .configuration_bert import ATTENTION_BACKENDS, BertConfig
from .flash_attn_triton import is_available as triton_is_available
from .flash_attn_triton import geglu_dropout, hash_dropout, varlen_attention, varlen_padded_layout

try:  # flash-attn 2 (has alibi_slopes): an optional alternative kernel
    from flash_attn import flash_attn_varlen_qkvpacked_func as fa2_varlen_qkvpacked
except ImportError:
    fa2_varlen_qkvpacked = None

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# ALiBi


def alibi_slopes_list(n_heads: int) -> list[float]:
    """Per-head ALiBi slopes: the geometric sequence 2^(-8/n), 2^(-16/n), ... for a power-of-two n; otherwise the
    ALiBi paper's rule: the slopes of the closest smaller power of two, then every other slope of the next larger."""

    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(closest) + alibi_slopes_list(2 * closest)[0::2][: n_heads - closest]


@functools.lru_cache(maxsize=16)
def _cached_alibi_slopes(n_heads: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(alibi_slopes_list(n_heads), dtype=torch.float32, device=device)


def alibi_slopes(n_heads: int, device: torch.device) -> torch.Tensor:
    """(n_heads,) fp32 slopes on `device`: built once per device in eager mode (never on the meta device at model
    build time); a constant of the graph under torch.compile/export."""
    if torch.compiler.is_compiling():
        return torch.tensor(alibi_slopes_list(n_heads), dtype=torch.float32, device=device)
    return _cached_alibi_slopes(n_heads, device)


def alibi_bias(slopes: torch.Tensor, seqlen: int) -> torch.Tensor:
    """(n_heads, seqlen, seqlen) fp32 bias -slope * |i - j|."""
    pos = torch.arange(seqlen, device=slopes.device)
    distance = (pos[None, :] - pos[:, None]).abs().to(torch.float32)
    return -slopes[:, None, None] * distance


# ----------------------------------------------------------------------------------------------------------------------
# Attention on unpadded tokens: one table of implementations with one signature


class Sequences:
    """The sequences of one forward pass: `cu_seqlens` (n_seqs + 1,) int32 offsets into the unpadded tokens and
    `max_seqlen` (an upper bound on their lengths; zero-length sequences are allowed). The PyTorch attention paths
    build, once per forward on first use, the layout that pads every sequence to `max_seqlen`."""

    def __init__(self, cu_seqlens: torch.Tensor, max_seqlen: int):
        self.cu_seqlens = cu_seqlens
        self.max_seqlen = max_seqlen
        self._padded = None

    @property
    def n_seqs(self) -> int:
        return self.cu_seqlens.shape[0] - 1

    def padded_layout(self, total: int):
        """(pad_index (total,) into the (n_seqs * max_seqlen) grid, key_valid (n_seqs, max_seqlen) bool)."""
        if self._padded is None:
            self._padded = varlen_padded_layout(self.cu_seqlens, total, self.max_seqlen)
        return self._padded


def _padded_qkv(qkv: torch.Tensor, seqs: Sequences):
    """(total, 3, h, d) -> q, k, v (n_seqs, h, max_seqlen, d) with zeros at padding, the gather index back, and the
    (n_seqs, h, L, L) fp32 bias: ALiBi, and -inf at padding keys (an empty sequence keeps key 0 so no row is all -inf)."""
    total, _, n_heads, head_dim = qkv.shape
    n, L = seqs.n_seqs, seqs.max_seqlen
    pad_index, key_valid = seqs.padded_layout(total)
    padded = index_put_first_axis(qkv, pad_index, n * L).view(n, L, 3, n_heads, head_dim)
    q, k, v = padded.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v, pad_index, key_valid


def _unpad_heads(out: torch.Tensor, pad_index: torch.Tensor) -> torch.Tensor:
    """(n, h, L, d) -> (total, h, d) at the real tokens."""
    n, h, L, d = out.shape
    return index_first_axis(out.transpose(1, 2).reshape(n * L, h, d), pad_index)


def _padded_alibi_bias(slopes, max_seqlen: int, key_valid) -> torch.Tensor:
    """The additive score bias of the padded paths: ALiBi, and -inf at padding keys. (n_seqs, n_heads, L, L)"""
    return alibi_bias(slopes, max_seqlen)[None].masked_fill(~key_valid[:, None, None, :], float("-inf"))


def eager_attention_with_probs(qkv, seqs: Sequences, slopes, dropout_p: float, through=None):
    """Plain matmul-softmax in fp32, with the ALiBi bias and padding masking; supports attention dropout.
    Returns the output (total_nnz, n_heads, head_dim) and the attention probabilities after dropout
    (n_seqs, n_heads, max_seqlen, max_seqlen), zero at padding keys. `through`: a function the probabilities pass
    through before they multiply the values (output_attentions keeps them on the autograd path this way)."""
    q, k, v, pad_index, key_valid = _padded_qkv(qkv, seqs)
    bias = _padded_alibi_bias(slopes, seqs.max_seqlen, key_valid)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1]) + bias
    probs = torch.softmax(scores, dim=-1)
    probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0).to(v.dtype)
    if through is not None:
        probs = through(probs)
    return _unpad_heads(torch.matmul(probs, v), pad_index), probs


def eager_attention(qkv, seqs: Sequences, slopes, dropout_p: float) -> torch.Tensor:
    """`eager_attention_with_probs` without the probabilities."""
    return eager_attention_with_probs(qkv, seqs, slopes, dropout_p)[0]


def sdpa_attention(qkv, seqs: Sequences, slopes, dropout_p: float) -> torch.Tensor:
    """PyTorch scaled_dot_product_attention with the ALiBi bias as an additive mask; supports attention dropout."""
    q, k, v, pad_index, key_valid = _padded_qkv(qkv, seqs)
    bias = _padded_alibi_bias(slopes, seqs.max_seqlen, key_valid)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p)
    return _unpad_heads(out, pad_index)


def triton_attention(qkv, seqs: Sequences, slopes, dropout_p: float) -> torch.Tensor:
    """The custom op `torch.ops.mosaic_bert.varlen_alibi_attn_fwd_v1` (`flash_attn_triton.py`): the Triton varlen
    kernel with in-kernel ALiBi for fp16/bf16 on CUDA, the same math in PyTorch elsewhere. torch.compile and
    torch.export see one opaque node with a registered backward. No attention dropout."""
    return varlen_attention(qkv, seqs.cu_seqlens, seqs.max_seqlen, slopes)


def flash_attn_attention(qkv, seqs: Sequences, slopes, dropout_p: float) -> torch.Tensor:
    """flash-attn 2's varlen kernel (optional package) with its ALiBi slopes."""
    return fa2_varlen_qkvpacked(qkv, seqs.cu_seqlens, seqs.max_seqlen, dropout_p, alibi_slopes=slopes)


# Every implementation: fn(qkv (total_nnz, 3, n_heads, head_dim), seqs, slopes (n_heads,) fp32, dropout_p)
#   -> (total_nnz, n_heads, head_dim). Add a backend here and to ATTENTION_BACKENDS in configuration_bert.py.
ATTENTION_FUNCTIONS = {
    "triton": triton_attention,
    "flash_attn": flash_attn_attention,
    "sdpa": sdpa_attention,
    "eager": eager_attention,
}


# transformers' `attn_implementation` names -> our backends (`config.attention_backend`, the keys above). Standard
# names where transformers has one; the Triton kernel and the automatic choice have their own, registered with
# transformers' AttentionInterface so that its checks accept them.
ATTN_IMPLEMENTATIONS = {
    "mosaic_auto": "auto",
    "mosaic_triton": "triton",
    "flash_attention_2": "flash_attn",
    "sdpa": "sdpa",
    "eager": "eager",
}
BACKEND_ATTN_IMPLEMENTATION = {backend: name for name, backend in ATTN_IMPLEMENTATIONS.items()}


def _mosaic_only(name: str):
    """The function registered under `name` in transformers' AttentionInterface. MosaicBERT calls its own table; a
    model built on transformers' attention interface that is given this name gets an error saying so."""

    def attention(module, *args, **kwargs):
        raise ValueError(
            f"attn_implementation={name!r} is MosaicBERT's attention (ALiBi on unpadded tokens) and only MosaicBERT "
            f"models can use it; load {type(module).__name__} with attn_implementation='sdpa' or 'eager'."
        )

    return attention


for _name in ("mosaic_auto", "mosaic_triton"):
    AttentionInterface.register(_name, _mosaic_only(_name))


def torch_attention(qkv, seqs: Sequences, slopes, dropout_p: float, backend: str = "sdpa") -> torch.Tensor:
    """The PyTorch attention paths by name ("sdpa" or "eager"), kept for callers of the earlier API."""
    return ATTENTION_FUNCTIONS[backend](qkv, seqs, slopes, dropout_p)


def resolve_attention_backend(config, device: torch.device, dtype: torch.dtype, dropout_p: float) -> str:
    """The one place that picks the attention implementation, from the config, the device, the activation dtype
    (the autocast dtype when autocast is on) and whether attention dropout is active. "auto": the Triton kernel on
    CUDA in fp16/bf16 without attention dropout, else flash-attn 2 if installed, else SDPA. An explicit "triton" runs
    anywhere (its op falls back to the same math in PyTorch off CUDA or in fp32), but has no attention dropout: with
    dropout active it falls back to SDPA with a one-time warning. `config.attention_backend` is the one setting read
    here; transformers' `attn_implementation=` and `set_attn_implementation` write it (`ATTN_IMPLEMENTATIONS`)."""
    backend = getattr(config, "attention_backend", "auto") or "auto"
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"config.attention_backend={backend!r} is not one of {ATTENTION_BACKENDS}")
    fast_ok = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    needs = {"flash_attn": (fast_ok and fa2_varlen_qkvpacked is not None, "the flash-attn package, CUDA, fp16/bf16")}
    if backend == "auto":
        if fast_ok and triton_is_available() and dropout_p == 0.0:
            return "triton"
        return "flash_attn" if needs["flash_attn"][0] else "sdpa"
    if backend in needs and not needs[backend][0]:
        raise RuntimeError(
            f"attention_backend={backend!r} needs {needs[backend][1]}; "
            "set attention_backend='auto' to fall back to PyTorch attention elsewhere."
        )
    if backend == "triton" and dropout_p > 0.0:
        logger.warning_once("Attention dropout is active: attention runs on the PyTorch SDPA path, not Triton.")
        return "sdpa"
    return backend


# ----------------------------------------------------------------------------------------------------------------------
# Modules


class LayerNorm(nn.LayerNorm):
    """LayerNorm that, under bf16/fp16 autocast and with `low_precision`, runs in the autocast dtype instead of fp32."""

    def __init__(self, hidden_size: int, eps: float, low_precision: bool):
        super().__init__(hidden_size, eps=eps)
        self.low_precision = low_precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        if self.low_precision and torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            with torch.autocast(device_type, enabled=False):
                return F.layer_norm(
                    x.to(dtype), self.normalized_shape, self.weight.to(dtype), self.bias.to(dtype), self.eps
                )
        return super().forward(x)


def _layer_norm(config) -> LayerNorm:
    return LayerNorm(config.hidden_size, config.layer_norm_eps, getattr(config, "low_precision_layernorm", True))


def hidden_dropout(x: torch.Tensor, dropout: nn.Dropout, training: bool) -> torch.Tensor:
    """Dropout of the hidden states. Eager: `F.dropout`. Under torch.compile: the counter-hash draws of
    `flash_attn_triton.hash_dropout`, plain integer ops that Inductor fuses into the LayerNorm kernel that follows
    instead of one Philox call per element (that kernel: 0.069 instead of 0.114 ms a layer at 24.6k tokens on an
    H100; same keep rate and scaling, a different random stream)."""
    if not training or dropout.p == 0.0:
        return x
    if torch.compiler.is_compiling():
        return hash_dropout(x, dropout.p)
    return F.dropout(x, dropout.p, True)


class BertEmbeddings(nn.Module):
    """Word + token-type embeddings, LayerNorm, dropout. No position embeddings: ALiBi encodes position."""

    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = _layer_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, inputs_embeds=None) -> torch.Tensor:
        # input_ids, token_type_ids: (total_nnz,) -> (total_nnz, hidden)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        return hidden_dropout(self.LayerNorm(embeddings), self.dropout, self.training)


class BertUnpadSelfAttention(nn.Module):
    """Fused QKV projection and attention over the unpadded tokens."""

    def __init__(self, config):
        super().__init__()
        if config.hidden_size % config.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({config.hidden_size}) must be a multiple of num_attention_heads "
                f"({config.num_attention_heads})"
            )
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.p_dropout = config.attention_probs_dropout_prob
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, seqs: Sequences, attention_fn) -> torch.Tensor:
        # (total_nnz, hidden) -> (total_nnz, 3, n_heads, head_dim)
        qkv = self.Wqkv(hidden_states).view(-1, 3, self.num_heads, self.head_dim)
        dropout_p = self.p_dropout if self.training else 0.0
        out = attention_fn(qkv, seqs, alibi_slopes(self.num_heads, qkv.device), dropout_p)
        return out.reshape(-1, self.num_heads * self.head_dim)  # (total_nnz, hidden)


class BertSelfOutput(nn.Module):
    """Output projection, dropout, residual, post-LN."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = _layer_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(hidden_dropout(self.dense(hidden_states), self.dropout, self.training) + input_tensor)


class BertUnpadAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = BertUnpadSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states, seqs: Sequences, attention_fn, subset_idx=None) -> torch.Tensor:
        context = self.self(hidden_states, seqs, attention_fn)
        if subset_idx is not None:  # keep only the tokens whose outputs are needed (last layer under MLM)
            context = index_first_axis(context, subset_idx)
            hidden_states = index_first_axis(hidden_states, subset_idx)
        return self.output(context, hidden_states)


def gelu_gate(gated: torch.Tensor, non_gated: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """dropout(GELU(gated) * non_gated), exact GELU. Plain PyTorch: compile the model (`torch.compile(model)`) and
    Inductor fuses it with its neighbours into one kernel each way."""
    return F.dropout(F.gelu(gated) * non_gated, p, training)


class BertGatedLinearUnitMLP(nn.Module):
    """GeGLU feed-forward: one (hidden -> 2 x intermediate) matmul, exact GELU on the first half times the second
    half, dropout, `wo`, residual, post-LN. In training the GeGLU and its dropout are one custom op
    (`flash_attn_triton.geglu_dropout`)."""

    def __init__(self, config):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm = _layer_norm(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        gate_up = self.gated_layers(hidden_states)  # (total_nnz, 2 x intermediate)
        if self.training:
            # the custom op `torch.ops.mosaic_bert.geglu_dropout_fwd_v2` (Triton on CUDA in fp16/bf16): cheaper
            # dropout draws and a backward that reads each input once, in eager and compiled training alike
            hidden_states = geglu_dropout(gate_up, self.dropout.p)
        else:  # plain PyTorch: torch.compile fuses it into one kernel at memory speed
            gated, non_gated = gate_up.split(self.intermediate_size, dim=-1)
            hidden_states = gelu_gate(gated, non_gated, 0.0, False)
        return self.layernorm(self.wo(hidden_states) + residual)


class BertLayer(GradientCheckpointingLayer):
    def __init__(self, config):
        super().__init__()
        self.attention = BertUnpadAttention(config)
        self.mlp = BertGatedLinearUnitMLP(config)

    def forward(self, hidden_states, seqs: Sequences = None, attention_fn=None, subset_idx=None) -> torch.Tensor:
        return self.mlp(self.attention(hidden_states, seqs, attention_fn, subset_idx))


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, seqs: Sequences, attention_fn, subset_idx=None, grid=None):
        """(total_nnz, hidden) -> (total_nnz or n_subset, hidden), and with `grid` (a `TokenGrid`) every layer's
        input and the last output in the caller's layout. Each layer then reads its input back from that tensor, so
        the returned hidden states lie on the autograd path to the outputs (`.retain_grad()` on them works).
        With `subset_idx`, the last layer computes its outputs only at those tokens (attention still sees all)."""
        all_hidden = [] if grid is not None else None
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            if grid is not None:
                hidden_states = grid.through(hidden_states, all_hidden)
            hidden_states = layer(hidden_states, seqs, attention_fn, subset_idx if i == last else None)
        if grid is not None:
            hidden_states = grid.through(hidden_states, all_hidden)
        return hidden_states, all_hidden


class BertPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, first_token: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(first_token))


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        act = config.hidden_act
        self.transform_act_fn = ACT2FN[act] if isinstance(act, str) else act
        self.LayerNorm = _layer_norm(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)  # weight tied to the word embeddings

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return self.predictions(sequence_output)


# ----------------------------------------------------------------------------------------------------------------------
# Input checks


def _check_shapes(input_ids, attention_mask, token_type_ids, inputs_embeds, labels=None):
    """Shape checks (free: shapes live on the host) with errors that say what is wrong."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
    if input_ids is not None and input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be (batch, seqlen), got shape {tuple(input_ids.shape)}; add a batch dimension "
            "with input_ids[None] for a single sequence."
        )
    shape = tuple(input_ids.shape) if input_ids is not None else tuple(inputs_embeds.shape[:2])
    for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids), ("labels", labels)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but the inputs have shape {shape}; they must match.")


def _value_checks_wanted(config, tensors) -> bool:
    """Value checks need the values on the host: free for CPU tensors; one sync per forward for tensors on an
    accelerator (skipped with `config.check_inputs=False`); never inside a compiled graph (skipped there)."""
    if torch.compiler.is_compiling():
        return False
    if all(t.device.type == "cpu" for t in tensors if t is not None):
        return True
    return bool(getattr(config, "check_inputs", True))


def _value_probes(input_ids, attention_mask, token_type_ids, labels, cu_seqlens) -> dict:
    """The scalars the value checks need, still on the inputs' device (read back together, once)."""
    probes = {}
    if input_ids is not None and input_ids.numel():
        probes["ids_lo"], probes["ids_hi"] = input_ids.min(), input_ids.max()
    if token_type_ids is not None and token_type_ids.numel():
        probes["tt_lo"], probes["tt_hi"] = token_type_ids.min(), token_type_ids.max()
    if attention_mask is not None and attention_mask.numel():
        probes["mask_lo"], probes["mask_hi"] = attention_mask.min(), attention_mask.max()
        if attention_mask.is_floating_point():
            probes["mask_fraction"] = (attention_mask != attention_mask.round()).any()
        if labels is not None:
            probes["labels_at_pad"] = ((labels != -100) & (attention_mask == 0)).any()
    if labels is not None and labels.numel():
        probes["labels_hi"] = labels.max()
        probes["labels_lo"] = torch.where(labels == -100, 0, labels).min()
    if cu_seqlens is not None:
        lens = cu_seqlens[1:] - cu_seqlens[:-1]
        probes["cu_first"], probes["cu_last"] = cu_seqlens[0], cu_seqlens[-1]
        if lens.numel():
            probes["len_lo"], probes["len_hi"] = lens.min(), lens.max()
    return probes


def _check_values(config, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, cu_seqlens=None,
                  max_seqlen=None, total=None):
    """Range checks on the values, all read with one host transfer."""
    if not _value_checks_wanted(config, (input_ids, attention_mask, token_type_ids, labels, cu_seqlens)):
        return
    probes = _value_probes(input_ids, attention_mask, token_type_ids, labels, cu_seqlens)
    if not probes:
        return
    device = next(iter(probes.values())).device
    v = dict(zip(probes, torch.stack([t.to(device=device, dtype=torch.long) for t in probes.values()]).tolist()))
    if "ids_lo" in v and (v["ids_lo"] < 0 or v["ids_hi"] >= config.vocab_size):
        raise ValueError(
            f"input_ids hold ids in [{v['ids_lo']}, {v['ids_hi']}] but the model's vocab_size is {config.vocab_size}: "
            "the tokenizer does not match the model (use the tokenizer saved with the model, or a model with a larger "
            "vocab)."
        )
    if "tt_lo" in v and (v["tt_lo"] < 0 or v["tt_hi"] >= config.type_vocab_size):
        raise ValueError(
            f"token_type_ids hold values in [{v['tt_lo']}, {v['tt_hi']}] but type_vocab_size is "
            f"{config.type_vocab_size}; segment ids must be 0 .. type_vocab_size - 1."
        )
    if v.get("mask_lo", 0) < 0 or v.get("mask_fraction", 0):
        raise ValueError("attention_mask must be 0 (padding), 1 (token), or document ids >= 1 for packed rows; it holds "
                         "negative or fractional values (an additive mask such as 0 / -10000 or a soft mask?). Pass "
                         "the tokenizer's 0/1 attention_mask.")
    if v.get("mask_hi", 1) == 0:
        raise ValueError("attention_mask is 0 everywhere, i.e. no token is attended (an additive mask, where 0 means "
                         "keep?). Pass the tokenizer's 0/1 attention_mask (1 = token, 0 = padding).")
    if "labels_hi" in v and (v["labels_lo"] < 0 or v["labels_hi"] >= config.vocab_size):
        raise ValueError(
            f"labels hold values in [{v['labels_lo']}, {v['labels_hi']}] besides -100, but vocab_size is "
            f"{config.vocab_size}: MLM labels are token ids of the model's tokenizer, and -100 where no loss is wanted."
        )
    if v.get("labels_at_pad", 0):
        raise ValueError("labels mark padding positions (attention_mask == 0); set them to -100.")
    if "cu_first" in v and (v["cu_first"] != 0 or v["cu_last"] != total or v.get("len_lo", 0) < 0):
        raise ValueError(
            f"cu_seq_lens_q must start at 0, never decrease and end at the number of tokens ({total}); it starts at "
            f"{v['cu_first']} and ends at {v['cu_last']}."
        )
    if max_seqlen is not None and v.get("len_hi", 0) > max_seqlen:
        raise ValueError(f"a sequence has {v['len_hi']} tokens but max_length_q is {max_seqlen}; it must be >= every "
                         "sequence length.")


def _token_layout(input_ids, inputs_embeds, attention_mask, position_ids, cu_seq_lens_q, cu_seq_lens_k, max_length_q,
                  max_length_k, indices) -> Unpadded:
    """Where the real tokens are, from whichever description the caller gave (first match wins):
    - `cu_seq_lens_q` (+ `max_length_q`): padding-free inputs in transformers' convention (input_ids (1, total),
      as `DataCollatorWithFlattening(return_flash_attn_kwargs=True)` gives), or, with `indices`, a padded
      (batch, seqlen) batch whose unpadding the data collator computed on the CPU. The model asks the GPU nothing.
    - `position_ids` of a padding-free (1, total) batch: each sequence restarts at 0 (one data-dependent size).
    - `attention_mask` (batch, seqlen): 0/1 or packed document ids (two data-dependent sizes).
    - nothing: every position is a token (static sizes)."""
    ref = input_ids if input_ids is not None else inputs_embeds
    batch, seqlen = ref.shape[0], ref.shape[1]
    cu = cu_seq_lens_q if cu_seq_lens_q is not None else cu_seq_lens_k
    if cu_seq_lens_q is not None and cu_seq_lens_k is not None and cu_seq_lens_k is not cu_seq_lens_q:
        if cu_seq_lens_k.shape != cu_seq_lens_q.shape:
            raise ValueError("MosaicBERT is a self-attention encoder: cu_seq_lens_k must equal cu_seq_lens_q.")
    max_len = max_length_q if max_length_q is not None else max_length_k
    if cu is None and position_ids is not None:
        if batch != 1:
            raise ValueError(
                "MosaicBERT has no position embeddings (ALiBi encodes position): position_ids are only read to find "
                "the sequences of a padding-free batch of shape (1, total); do not pass position_ids otherwise."
            )
        pos = position_ids.reshape(-1)
        starts = (pos == 0) | (torch.arange(pos.shape[0], device=pos.device) == 0)
        cu = torch.cat([torch.nonzero(starts).flatten(), torch.full((1,), seqlen, device=pos.device)])
        max_len = seqlen if max_len is None else max_len
    if cu is not None:
        if indices is None and batch != 1:
            raise ValueError(
                f"cu_seq_lens_q describes a padding-free batch, so input_ids must be (1, total), got {tuple(ref.shape)};"
                " for a padded batch pass indices (flat positions of the real tokens) as well, or attention_mask only."
            )
        if max_len is None:
            if torch.compiler.is_compiling():
                raise ValueError("Under torch.compile pass max_length_q (a Python int) with cu_seq_lens_q.")
            max_len = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0  # one host sync
        if indices is not None:
            indices = indices.to(device=ref.device, dtype=torch.long, non_blocking=True)
        # non_blocking: a blocking host-to-device copy would wait for the GPU queue (collators send CPU tensors)
        cu = cu.to(device=ref.device, dtype=torch.int32, non_blocking=True)
        return Unpadded(indices, cu, int(max_len), batch, seqlen)
    if indices is not None:
        raise ValueError("indices describe a precomputed unpadding: pass cu_seq_lens_q and max_length_q with them.")
    if attention_mask is None:
        return full_layout(batch, seqlen, ref.device)
    return unpad_mask(attention_mask)


# ----------------------------------------------------------------------------------------------------------------------
# Models

AUTO_MAP = {
    "AutoConfig": "configuration_bert.BertConfig",
    "AutoModel": "modeling_bert.BertModel",
    "AutoModelForTextEncoding": "modeling_bert.BertModel",
    "AutoModelForMaskedLM": "modeling_bert.BertForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_bert.BertForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_bert.BertForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_bert.BertForQuestionAnswering",
    "AutoModelForMultipleChoice": "modeling_bert.BertForMultipleChoice",
    # stock BERT heads that MosaicBERT does not have: listed so that they fail with the reason instead of falling back
    # to stock BERT with a random encoder: transformers finds its own classes by the config's class name (BertConfig,
    # ours or the stock one the model card passes), so every Auto class with a "bert" entry must be answered here.
    "AutoModelForPreTraining": "modeling_bert.BertForPreTraining",
    "AutoModelForNextSentencePrediction": "modeling_bert.BertForNextSentencePrediction",
    "AutoModelForCausalLM": "modeling_bert.BertLMHeadModel",
}

# PEFT's default `target_modules` (LoRA and the methods sharing its table) for this model_type: the fused q/k/v
# projection of every layer, as PEFT targets query and value of stock BERT and the fused projection of GPT-2 or MPT.
PEFT_DEFAULT_TARGET_MODULES = ["Wqkv"]


def register_peft_defaults() -> None:
    """PEFT picks default target modules by `config.model_type` from its own tables, which do not know ours: add ours
    wherever PEFT's default for BERT is the query and value projections. Only if PEFT is already imported (the model
    never imports it); run when this file is imported and when a model is built. Entries already there are kept."""
    constants = sys.modules.get("peft.utils.constants")
    if constants is None:
        return
    for name, table in vars(constants).items():
        bert_default = table.get("bert") if isinstance(table, dict) else None
        if name.endswith("_TARGET_MODULES_MAPPING") and bert_default == ["query", "value"]:
            table.setdefault(BertConfig.model_type, list(PEFT_DEFAULT_TARGET_MODULES))


_DAMAGED = ("the file was cut short or damaged (an interrupted save, copy or download). Copy or download it again, or "
            "save the model again from its source.")
_LFS_POINTER = ("it is a Git LFS pointer, not the weights (a clone without git-lfs). Run `git lfs pull` in the folder, "
                "or download the repository with huggingface_hub.")


def _safetensors_problem(path: str) -> Optional[str]:
    """What is wrong with a safetensors file and the fix, judged from its header and size alone (None: nothing)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if head == b"version ":
            return f"is {size} bytes: {_LFS_POINTER}"
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        if len(head) < 8 or 8 + n > size:
            return f"is truncated ({size} bytes, shorter than its own header): {_DAMAGED}"
        text = f.read(n)
    try:
        header = json.loads(text)
    except ValueError:
        header = None
    if not isinstance(header, dict) or not all(isinstance(v, dict) for v in header.values()):
        return f"has a damaged header (not a safetensors file, or overwritten): {_DAMAGED}"
    offsets = [v["data_offsets"] for k, v in header.items() if k != "__metadata__" and "data_offsets" in v]
    end = max((o[1] for o in offsets), default=0)  # the tensors' bytes follow the header
    if 8 + n + end > size:
        return f"is truncated ({size} bytes; its tensors need {8 + n + end}): {_DAMAGED}"
    return None


def _check_local_weights(source, subfolder=None) -> None:
    """A truncated or damaged weights file (or a Git LFS pointer) in a local folder is named, with the fix, before
    transformers reads it (its own error names neither the file nor the cause). Hub ids are left alone."""
    if not isinstance(source, (str, os.PathLike)):
        return
    folder = os.path.join(source, subfolder or "")
    if not os.path.isdir(folder):
        return
    files = ["model.safetensors"]
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f).get("weight_map", {}).values()))
    for name in files:
        path = os.path.join(folder, name)
        problem = _safetensors_problem(path) if os.path.isfile(path) else None
        if problem:
            raise ValueError(f"{path} {problem}")


class BertPreTrainedModel(PreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BertEmbeddings", "BertLayer"]
    # transformers' attention switch (`attn_implementation=`, `set_attn_implementation`): the names in
    # ATTN_IMPLEMENTATIONS. Not `_supports_attention_backend`: attention runs on our table, not on transformers' kernels.
    _supports_sdpa = True
    _supports_flash_attn = True

    def get_correct_attn_implementation(self, requested_attention, is_init_check: bool = False) -> str:
        """transformers' check of an `attn_implementation` name, for our names (`ATTN_IMPLEMENTATIONS`). Nothing
        requested: the name of the saved `config.attention_backend` ("mosaic_auto" by default: Triton on CUDA). The
        accepted name is written to `config.attention_backend`, the one setting the forward reads."""
        name = requested_attention
        if name is None:
            name = BACKEND_ATTN_IMPLEMENTATION[getattr(self.config, "attention_backend", "auto") or "auto"]
        if name not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"Specified `attn_implementation=\"{name}\"` is not supported by MosaicBERT (ALiBi attention on "
                f"unpadded tokens); use one of {list(ATTN_IMPLEMENTATIONS)} (mosaic_auto, the default, picks the "
                "fastest that applies)."
            )
        if name == "flash_attention_2":
            self._flash_attn_can_dispatch(flash_attn_version=2, is_init_check=is_init_check)
        self.config.attention_backend = ATTN_IMPLEMENTATIONS[name]
        return name

    def _check_and_adjust_attn_implementation(self, attn_implementation, is_init_check: bool = False,
                                              allow_all_kernels: bool = False) -> str:
        """Our names only: transformers' substitutions (a Hub kernel for a missing flash-attn package, "paged|"
        prefixes) would name functions this model never calls, so they are not made."""
        return self.get_correct_attn_implementation(attn_implementation, is_init_check)

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """`set_attn_implementation` works: every forward reads the choice from the config."""
        return True

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        """As transformers'; afterwards `config.attention_backend` names the same implementation, even if it had
        been edited by hand since the last switch."""
        super().set_attn_implementation(attn_implementation, *args, **kwargs)
        self.config.attention_backend = ATTN_IMPLEMENTATIONS[self.config._attn_implementation]

    @torch.no_grad()
    def _init_weights(self, module):
        # Linear/Embedding ~ N(0, initializer_range), zero biases and padding row, LayerNorm = identity.
        super()._init_weights(module)

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        register_peft_defaults()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Write a Hub-ready folder: safetensors weights, config.json whose auto_map names all four auto classes,
        and the four remote-code files. Tokenizer files go beside them with `tokenizer.save_pretrained(folder)`."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As transformers' `from_pretrained`, but an encoder weight that is missing from the checkpoint, or a
        checkpoint tensor the encoder does not have, is an error that names them: this catches loading a
        non-MosaicBERT checkpoint (e.g. stock BERT with position embeddings). New heads may still start fresh.
        A stock `transformers.BertConfig` given as `config=` (the model card's usage) is read as this model's config,
        so that the model, and a folder it saves, keep MosaicBERT's model_type."""
        if "config" in kwargs:
            kwargs["config"] = cls.config_class.from_stock(kwargs["config"])
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        _check_local_weights(source, kwargs.get("subfolder"))
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)

        def encoder_keys(keys):
            return sorted(k for k in keys if "embeddings." in k or "encoder." in k)

        missing, unexpected = encoder_keys(info.get("missing_keys", [])), encoder_keys(info.get("unexpected_keys", []))
        if missing or unexpected:
            raise ValueError(
                f"{source} is not a {cls.__name__} checkpoint of this shape: "
                f"missing encoder weights {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
                f"unexpected weights {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}. "
                "Load a MosaicBERT checkpoint, or a config that matches it."
            )
        return (model, info) if want_info else model


def _rows_of_positions(indices, positions: torch.Tensor, grid: int, total: int) -> torch.Tensor:
    """Positions in the padded (batch * seqlen) grid -> rows of the unpadded tokens, in the same (row-major) order.
    The filler position `grid` (fixed-capacity positions, `bucketed_layout`) maps to some row, loss-free."""
    if indices is None:
        return positions.clamp(max=total - 1)
    row_of = torch.zeros(grid + 1, dtype=torch.long, device=indices.device)
    row_of = row_of.index_copy(0, indices, torch.arange(total, device=indices.device))
    return row_of[positions]


class TokenGrid(NamedTuple):
    """The caller's (batch, seqlen) layout of the unpadded tokens (`indices` None: every position is a token; `fill`:
    filler tokens at index batch * seqlen, dropped from outputs)."""

    indices: Optional[torch.Tensor]
    batch: int
    seqlen: int
    fill: bool

    def pad(self, hidden: torch.Tensor) -> torch.Tensor:
        """(total_nnz, ...) -> (batch, seqlen, ...) with zeros at padding."""
        return pad_input(hidden, self.indices, self.batch, self.seqlen, self.fill)

    def through(self, hidden: torch.Tensor, sink: list) -> torch.Tensor:
        """Pad `hidden`, keep the padded tensor in `sink`, and return the tokens read back from it (total_nnz, ...):
        the same values (filler tokens read zeros), computed from the kept tensor."""
        padded = self.pad(hidden)
        sink.append(padded)
        return gather_tokens(padded, self.indices, self.fill)


def _repad(hidden, grid: TokenGrid, subset_idx, masked_positions, last_padded=None) -> torch.Tensor:
    """The encoder's output in the caller's layout: (n_masked, hidden) at the masked positions (row-major), else
    (batch, seqlen, hidden) with zeros at padding (or (1, total, hidden) for padding-free inputs). `last_padded`: the
    last layer's output already padded (the last of the returned hidden states), used as is."""
    if subset_idx is not None:
        return hidden  # the last layer ran only at the masked rows
    padded = grid.pad(hidden) if last_padded is None else last_padded
    if masked_positions is not None:
        flat = padded.reshape(grid.batch * grid.seqlen, -1)
        return torch.cat([flat, flat.new_zeros((1, flat.shape[1]))])[masked_positions]
    return padded


class AttentionPairs(NamedTuple):
    """Where the (query, key) pairs of each sequence lie in the caller's (batch, n_heads, seqlen, seqlen) layout."""

    pair: torch.Tensor  # (n_seqs, L, L) bool: both offsets are tokens of the sequence
    target: torch.Tensor  # (n_pairs,) flat (row, query, key) index, row `batch` for filler tokens
    grid: TokenGrid


def attention_pairs(seqs: Sequences, grid: TokenGrid, total: int) -> AttentionPairs:
    """The pairs of the `total` unpadded tokens' sequences and their flat positions in the caller's layout."""
    pad_index, _ = seqs.padded_layout(total)
    n, L, device = seqs.n_seqs, seqs.max_seqlen, pad_index.device
    positions = grid.indices if grid.indices is not None else torch.arange(total, device=device)
    slot = torch.full((n * L,), -1, dtype=torch.long, device=device)
    slot = slot.index_copy(0, pad_index, positions).view(n, L)  # grid position of each (sequence, offset), -1: none
    valid = slot >= 0
    pair = valid[:, :, None] & valid[:, None, :]
    row, col = slot // grid.seqlen, slot % grid.seqlen
    target = (row[:, :, None] * grid.seqlen + col[:, :, None]) * grid.seqlen + col[:, None, :]  # (n, L, L)
    return AttentionPairs(pair, target[pair], grid)


def probs_to_grid(probs: torch.Tensor, pairs: AttentionPairs) -> torch.Tensor:
    """(n_seqs, n_heads, L, L) per sequence -> (batch, n_heads, seqlen, seqlen): each pair at its positions in its
    row, zero between tokens of different sequences (padding, other documents of a packed row)."""
    g = pairs.grid
    values = probs.permute(0, 2, 3, 1)[pairs.pair]  # (n_pairs, n_heads)
    out = index_put_first_axis(values, pairs.target, (g.batch + 1) * g.seqlen * g.seqlen)  # + filler row
    return out[: g.batch * g.seqlen * g.seqlen].view(g.batch, g.seqlen, g.seqlen, -1).permute(0, 3, 1, 2)


def probs_from_grid(in_grid: torch.Tensor, pairs: AttentionPairs, n_seqs: int, max_seqlen: int) -> torch.Tensor:
    """The inverse of `probs_to_grid` (filler tokens' pairs read zero): (n_seqs, n_heads, L, L)."""
    g, heads = pairs.grid, in_grid.shape[1]
    flat = in_grid.permute(0, 2, 3, 1).reshape(g.batch * g.seqlen * g.seqlen, heads)
    flat = torch.cat([flat, flat.new_zeros((g.seqlen * g.seqlen, heads))])
    at = torch.nonzero(pairs.pair.reshape(-1), as_tuple=False).flatten()
    out = index_put_first_axis(index_first_axis(flat, pairs.target), at, n_seqs * max_seqlen * max_seqlen)
    return out.view(n_seqs, max_seqlen, max_seqlen, heads).permute(0, 3, 1, 2)


def recording_eager_attention(sink: list, grid: TokenGrid):
    """The eager attention function, appending each call's probabilities in the caller's layout
    (batch, n_heads, seqlen, seqlen) to `sink`; the output is computed from them (they are on the autograd path).
    The pairs' layout is built once per `Sequences` (as its padded layout is) and shared by every layer."""
    last = [None, None]  # the Sequences of the last call and its AttentionPairs

    def attention(qkv, seqs: Sequences, slopes, dropout_p: float) -> torch.Tensor:
        if last[0] is not seqs:
            last[:] = seqs, attention_pairs(seqs, grid, qkv.shape[0])
        pairs = last[1]

        def through_grid(probs):
            sink.append(probs_to_grid(probs, pairs))
            return probs_from_grid(sink[-1], pairs, seqs.n_seqs, seqs.max_seqlen)

        return eager_attention_with_probs(qkv, seqs, slopes, dropout_p, through_grid)[0]

    return attention


class BertModel(BertPreTrainedModel):
    """The MosaicBERT encoder. `last_hidden_state` is (batch, seqlen, hidden) with zeros at padding; with
    `masked_positions` (flat row-major positions in the (batch * seqlen) grid) or `masked_tokens_mask` (batch, seqlen)
    it is (n_masked, hidden) in row-major order: the last layer ran only at those tokens."""

    def __init__(self, config, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def _attention_function(self, hidden: torch.Tensor, probs_sink: Optional[list], grid: TokenGrid):
        """The attention implementation for every layer of this forward: it depends on the device, the activation
        dtype and whether attention dropout is active, which are known only here (autocast is a runtime setting).
        With `probs_sink` (output_attentions), the eager path, recording each layer's probabilities there."""
        device = hidden.device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
        dropout_p = self.config.attention_probs_dropout_prob if self.training else 0.0
        backend = resolve_attention_backend(self.config, device, dtype, dropout_p)
        if probs_sink is None:
            return ATTENTION_FUNCTIONS[backend]
        if backend != "eager":
            logger.warning_once(
                f"output_attentions=True: attention runs on the eager path for those calls (only it forms the "
                f"probabilities), not {backend!r}; load the model with attn_implementation='eager' to say so."
            )
        return recording_eager_attention(probs_sink, grid)

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def _warn_past_alibi_length(self, max_seqlen: int):
        alibi_size = getattr(self.config, "alibi_starting_size", 512)
        if not torch.compiler.is_compiling() and max_seqlen > alibi_size:  # eager only: no guard on the length
            logger.warning_once(
                f"Input sequences are longer than config.alibi_starting_size={alibi_size}: ALiBi extrapolates beyond "
                "the trained length. Set config.alibi_starting_size to the length you intend to silence this."
            )

    def _embed(self, u, input_ids, inputs_embeds, token_type_ids, fill: bool, total: int) -> torch.Tensor:
        """Embeddings of the real (and filler) tokens only: (total_nnz, hidden)."""
        flat_ids = gather_tokens(input_ids, u.indices, fill) if input_ids is not None else None
        flat_embeds = gather_tokens(inputs_embeds, u.indices, fill) if inputs_embeds is not None else None
        if token_type_ids is not None:
            flat_types = gather_tokens(token_type_ids, u.indices, fill)
        else:
            ref = input_ids if input_ids is not None else inputs_embeds
            flat_types = torch.zeros(total, dtype=torch.long, device=ref.device)
        return self.embeddings(flat_ids, flat_types, flat_embeds)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                output_hidden_states=None, return_dict=None, masked_tokens_mask=None, masked_positions=None,
                cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None, indices=None,
                output_attentions=None, **kwargs):
        """Padded inputs: `input_ids` (batch, seqlen) with `attention_mask` (0/1 or packed document ids).
        Padding-free inputs (no host sync): `input_ids` (1, total) with `cu_seq_lens_q` (n_seqs + 1,) and
        `max_length_q` (int), transformers' flash-attention kwargs; `position_ids` alone also work (one sync). A
        padded batch whose unpadding the collator computed: add `indices` (total,) flat positions of the real tokens
        in the (batch * seqlen) grid to `cu_seq_lens_q` and `max_length_q`. Outputs keep the input's layout:
        `hidden_states` (output_hidden_states) are each layer's input and the last output, (batch, seqlen, hidden),
        on the autograd path; `attentions` (output_attentions, eager path) are (batch, n_heads, seqlen, seqlen)."""
        _check_shapes(input_ids, attention_mask, token_type_ids, inputs_embeds)
        input_ids = _check_token_inputs(self.config, input_ids, inputs_embeds)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        ref = input_ids if input_ids is not None else inputs_embeds
        batch, seqlen = ref.shape[0], ref.shape[1]
        padding_free = indices is None and (cu_seq_lens_q is not None or cu_seq_lens_k is not None
                                            or position_ids is not None)

        # Unpad once: everything below runs on (total_nnz, ...).
        u = _token_layout(input_ids, inputs_embeds, attention_mask, position_ids, cu_seq_lens_q, cu_seq_lens_k,
                          max_length_q, max_length_k, indices)
        cu_given = cu_seq_lens_q if cu_seq_lens_q is not None else cu_seq_lens_k
        total = u.indices.shape[0] if u.indices is not None else batch * seqlen
        _check_values(self.config, input_ids, None if padding_free else attention_mask, token_type_ids,
                      cu_seqlens=cu_given, max_seqlen=u.max_seqlen if cu_given is not None else None, total=total)
        self._warn_past_alibi_length(u.max_seqlen)
        fill = indices is not None  # a caller's unpadding may hold filler tokens (index batch * seqlen)
        hidden = self._embed(u, input_ids, inputs_embeds, token_type_ids, fill, total)  # (total_nnz, hidden)
        seqs = Sequences(u.cu_seqlens, u.max_seqlen)

        if masked_positions is None and masked_tokens_mask is not None:
            masked_positions = torch.nonzero(masked_tokens_mask.reshape(-1), as_tuple=False).flatten()
        subset_idx = None
        if masked_positions is not None and not output_hidden_states:
            subset_idx = _rows_of_positions(u.indices, masked_positions, batch * seqlen, total)
        grid = TokenGrid(u.indices, batch, seqlen, fill)
        probs = [] if output_attentions else None
        attention_fn = self._attention_function(hidden, probs, grid)
        hidden, all_hidden = self.encoder(hidden, seqs, attention_fn, subset_idx, grid if output_hidden_states else None)

        sequence_output = _repad(hidden, grid, subset_idx, masked_positions, all_hidden[-1] if all_hidden else None)
        pooled_output = None
        if self.pooler is not None and masked_positions is None:
            # the first token of each row; of each sequence for padding-free inputs (n_seqs, hidden)
            first = _first_tokens(hidden, u.cu_seqlens) if padding_free else sequence_output[:, 0]
            pooled_output = self.pooler(first)
        hidden_states = tuple(all_hidden) if output_hidden_states else None
        attentions = tuple(probs) if output_attentions else None

        if not return_dict:
            return tuple(v for v in (sequence_output, pooled_output, hidden_states, attentions) if v is not None)
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output, pooler_output=pooled_output, hidden_states=hidden_states,
            attentions=attentions,
        )


class BertForMaskedLM(BertPreTrainedModel):
    """MosaicBERT with its MLM head.

    With `labels` (batch, seqlen; -100 = not a prediction target), the last layer and the head run only at the
    labelled tokens: `loss` is the mean cross-entropy over them and `logits` is (n_labelled, vocab) in row-major
    (batch, position) order. A collator may pass those positions as `masked_positions` (C,) with a fixed capacity
    (filled with `batch * seqlen`; `bert_padding.bucketed_layout`): then `logits` is (C, vocab), the filler rows
    carry no loss, and the step has no data-dependent size. Without labels, `logits` is (batch, seqlen, vocab) (zeros at padding), e.g. for fill-mask.
    """

    _tied_weights_keys = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        positions = kwargs.pop("masked_positions", None)
        if labels is not None:
            _check_shapes(input_ids, attention_mask, None, inputs_embeds, labels)
            _check_values(self.config, attention_mask=attention_mask, labels=labels)
            flat_labels = labels.reshape(-1)
            if positions is None:
                positions = torch.nonzero(flat_labels != -100, as_tuple=False).flatten()  # a data-dependent size
                targets = flat_labels[positions]  # (n_masked,) row-major, the order of the logits below
            else:  # fixed capacity from the collator (`bucketed_layout`): filler positions batch * seqlen, target -100
                positions = positions.to(device=flat_labels.device, dtype=torch.long, non_blocking=True)
                targets = torch.cat([flat_labels, flat_labels.new_full((1,), -100)])[positions]
        elif positions is not None:
            raise ValueError("masked_positions go with labels (the MLM loss); without labels pass neither.")
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            masked_positions=positions,
            **kwargs,
        )
        sequence_output = outputs.last_hidden_state
        loss = None
        logits = self.cls(sequence_output)  # (batch, seqlen, vocab), or (n_masked, vocab) with labels
        if labels is None:
            if kwargs.get("indices") is None:
                logits = _zero_at_padding(logits, attention_mask)
        else:
            # mean over the labelled tokens; no labelled token gives a zero loss that still has a graph (DDP)
            n_masked = (flat_labels != -100).sum().clamp_min(1)
            loss = F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum") / n_masked
        return _returned(MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions), return_dict)


def _check_class_ids(config, labels: torch.Tensor, num_classes=None, attention_mask=None):
    """Class ids must lie in [0, num_classes) (-100 = ignore; num_classes defaults to config.num_labels) and, given an
    attention_mask of the labels' shape, sit only at real tokens. Read with one host transfer, where it costs no GPU
    sync (see check_inputs)."""
    if not _value_checks_wanted(config, (labels, attention_mask)) or not labels.numel():
        return
    n = config.num_labels if num_classes is None else num_classes
    probes = [torch.where(labels == -100, 0, labels).min(), labels.max()]
    if attention_mask is not None:
        probes.append(((labels != -100) & (attention_mask == 0)).any())
    lo, hi, *at_padding = torch.stack([p.long() for p in probes]).tolist()
    if (lo < 0 or hi >= n) and num_classes is not None:
        raise ValueError(f"labels hold choice indices in [{lo}, {hi}] but the inputs have {n} choices; a label is the "
                         f"index of the right choice, 0 .. {n - 1}.")
    if lo < 0 or hi >= n:
        raise ValueError(f"labels hold class ids in [{lo}, {hi}] but the classifier has num_labels={n}; "
                         f"load the model with num_labels={hi + 1} (or map the labels to 0 .. num_labels - 1).")
    if any(at_padding):
        raise ValueError("labels give a class at padding positions (attention_mask == 0); set them to -100 there "
                         "(DataCollatorForTokenClassification pads labels with -100).")


def _check_token_inputs(config, input_ids, inputs_embeds):
    """Dtype and size checks that cost no host sync; returns `input_ids` as int64/int32 (any integer dtype is cast)."""
    if input_ids is not None:
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}; pass the "
                             "tokenizer's ids (return_tensors='pt' gives int64), or .long() them if they are whole "
                             "numbers.")
        if input_ids.dtype not in (torch.long, torch.int32):
            input_ids = input_ids.long()  # int16/uint8/...: the embedding lookup takes int64 or int32
    if inputs_embeds is not None and (inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size):
        raise ValueError(f"inputs_embeds must be (batch, seqlen, hidden_size={config.hidden_size}), got shape "
                         f"{tuple(inputs_embeds.shape)}; embed with this model's get_input_embeddings() (add a batch "
                         "dimension with [None] for a single sequence).")
    ref = input_ids if input_ids is not None else inputs_embeds
    if ref is not None and ref.shape[0] and not ref.shape[1]:
        raise ValueError("the inputs have no positions (seqlen 0): every row needs at least one token (a tokenizer "
                         "adds [CLS] and [SEP]); drop empty texts before batching.")
    return input_ids


def _first_tokens(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """The first token of each sequence of a padding-free batch, (n_seqs, hidden); zeros for an empty sequence (as an
    all-padding row of a padded batch gives), without asking the device which sequences are empty."""
    starts = cu_seqlens[:-1].long().clamp(max=hidden.shape[0] - 1)  # total_nnz >= 1: empty inputs are refused
    empty = (cu_seqlens[1:] == cu_seqlens[:-1])[:, None]  # (n_seqs, 1)
    first = hidden[starts]
    return torch.where(empty, torch.zeros_like(first), first)


def _zero_at_padding(logits: torch.Tensor, attention_mask) -> torch.Tensor:
    """Per-token outputs (batch, seqlen, n) with zeros at padding, as the encoder's `last_hidden_state` has."""
    if attention_mask is None:
        return logits
    return logits * attention_mask.ne(0)[..., None].to(logits.dtype)


def _classifier_dropout(config) -> nn.Dropout:
    p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return nn.Dropout(p)


def _returned(output, return_dict):
    """A ModelOutput, or transformers' tuple form of it (its fields that are not None, in order)."""
    return output if return_dict else output.to_tuple()


class BertForSequenceClassification(BertPreTrainedModel):
    """MosaicBERT with a pooler and a classifier; the loss follows transformers' `problem_type` rules
    (regression for num_labels == 1, single-label for integer labels, multi-label otherwise)."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=True)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))  # (batch, num_labels)
        loss = None
        if labels is not None:
            if self.config.problem_type is None:
                if self.num_labels == 1:
                    self.config.problem_type = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"
            if self.config.problem_type == "regression":
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.squeeze(-1).float()) if self.num_labels == 1 else (
                    F.mse_loss(logits.float(), labels.float())
                )
            elif self.config.problem_type == "single_label_classification":
                _check_class_ids(self.config, labels)
                loss = F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return _returned(SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                                  attentions=outputs.attentions), return_dict)


class BertForTokenClassification(BertPreTrainedModel):
    """MosaicBERT with a classifier on every token (NER, tagging), as transformers' `BertForTokenClassification`:
    `logits` (batch, seqlen, num_labels), zeros at padding; `labels` (batch, seqlen) class ids with -100 where no loss
    is wanted (special tokens, word continuations, padding); `loss` is the mean cross-entropy over the labelled
    tokens. Padding-free batches (`DataCollatorWithFlattening`) work as for the encoder."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if labels is not None:
            _check_shapes(input_ids, attention_mask, None, inputs_embeds, labels)
            _check_class_ids(self.config, labels, attention_mask=attention_mask)
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds,
                            output_hidden_states=output_hidden_states, return_dict=True, **kwargs)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (batch, seqlen, num_labels)
        logits = _zero_at_padding(logits, attention_mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels).float(), labels.reshape(-1))
        return _returned(TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                               attentions=outputs.attentions), return_dict)


def _span_loss(logits: torch.Tensor, positions: torch.Tensor, attention_mask) -> torch.Tensor:
    """transformers' extractive-QA loss for one end of the span, over each row's real tokens: padding takes no
    probability (so the loss does not depend on how much padding the batch has), and a position outside the row's
    tokens (past the input, as transformers clamps it, or at padding) carries no loss."""
    seqlen = logits.shape[1]
    positions = positions.reshape(-1).clamp(0, seqlen)  # (batch,)
    logits = logits.float()
    if attention_mask is not None and attention_mask.dim() == 2:
        real = attention_mask.ne(0)  # (batch, seqlen)
        logits = logits.masked_fill(~real, -1e9)  # finite: an all-padding row stays NaN-free
        inside = torch.cat([real, real.new_zeros((real.shape[0], 1))], 1).gather(1, positions[:, None])[:, 0]
        positions = torch.where(inside, positions, seqlen)
    return F.cross_entropy(logits, positions, ignore_index=seqlen)


class BertForQuestionAnswering(BertPreTrainedModel):
    """MosaicBERT for extractive question answering, as transformers' `BertForQuestionAnswering`: `start_logits` and
    `end_logits` (batch, seqlen), zeros at padding; with `start_positions` and `end_positions` (batch,), `loss` is the
    mean of the two cross-entropies, each over the row's real tokens (positions past them are ignored), so that, unlike
    stock BERT's, it does not change with the batch's padding."""

    def __init__(self, config):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"BertForQuestionAnswering predicts a start and an end logit per token, so num_labels "
                             f"must be 2, got {config.num_labels}; load it with num_labels=2.")
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds,
                            output_hidden_states=output_hidden_states, return_dict=True, **kwargs)
        logits = _zero_at_padding(self.qa_outputs(outputs.last_hidden_state), attention_mask)  # (batch, seqlen, 2)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = (_span_loss(start_logits, start_positions, attention_mask)
                    + _span_loss(end_logits, end_positions, attention_mask)) / 2
        return _returned(QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                                      hidden_states=outputs.hidden_states,
                                                      attentions=outputs.attentions), return_dict)


def _flatten_choices(t, keep: int):
    """(batch, num_choices, *rest) -> (batch * num_choices, *rest), rest being the last `keep` dimensions."""
    return None if t is None else t.reshape(-1, *t.shape[t.dim() - keep:])


class BertForMultipleChoice(BertPreTrainedModel):
    """MosaicBERT for multiple choice (SWAG, RACE), as transformers' `BertForMultipleChoice`: inputs are
    (batch, num_choices, seqlen); each choice is encoded alone, pooled and scored; `logits` (batch, num_choices);
    `labels` (batch,) the index of the right choice; `loss` the cross-entropy over the choices."""

    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=True)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        ref = input_ids if input_ids is not None else inputs_embeds
        name = "input_ids" if input_ids is not None else "inputs_embeds"
        if ref is not None and ref.dim() != (3 if input_ids is not None else 4):
            raise ValueError(f"multiple-choice inputs are (batch, num_choices, seqlen), got {name} of shape "
                             f"{tuple(ref.shape)}; tokenize each (context, choice) pair and stack the choices along "
                             "dimension 1.")
        num_choices = ref.shape[1] if ref is not None else 0
        if labels is not None:
            _check_class_ids(self.config, labels, num_classes=num_choices)
        outputs = self.bert(_flatten_choices(input_ids, 1), attention_mask=_flatten_choices(attention_mask, 1),
                            token_type_ids=_flatten_choices(token_type_ids, 1),
                            position_ids=_flatten_choices(position_ids, 1),
                            inputs_embeds=_flatten_choices(inputs_embeds, 2),
                            output_hidden_states=output_hidden_states, return_dict=True, **kwargs)
        scores = self.classifier(self.dropout(outputs.pooler_output))  # (batch * num_choices, 1)
        logits = scores.reshape(-1, num_choices)  # (batch, num_choices)
        loss = F.cross_entropy(logits.float(), labels.reshape(-1)) if labels is not None else None
        return _returned(MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                                   attentions=outputs.attentions), return_dict)


class _HeadMosaicBertLacks(BertPreTrainedModel):
    """A stock BERT head that MosaicBERT does not have. Listed in `AUTO_MAP` so that its Auto class, or building it,
    fails with `reason` before anything is loaded, instead of falling back to stock BERT with a random encoder."""

    reason = ""

    def __init__(self, config, *args, **kwargs):
        raise ValueError(f"{type(self).__name__}: {self.reason}")

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        raise ValueError(f"{cls.__name__}: {cls.reason}")


_NO_NSP = ("MosaicBERT is pretrained with masked language modelling only and has no next-sentence-prediction head; "
           "load AutoModelForMaskedLM (BertForMaskedLM) for the pretraining head, or AutoModel for the encoder.")


class BertForPreTraining(_HeadMosaicBertLacks):
    reason = _NO_NSP


class BertForNextSentencePrediction(_HeadMosaicBertLacks):
    reason = _NO_NSP


class BertLMHeadModel(_HeadMosaicBertLacks):
    reason = ("MosaicBERT is a bidirectional encoder without a causal language-model head; load AutoModelForMaskedLM "
              "(BertForMaskedLM) to predict masked tokens, and use a decoder model for text generation.")


BertConfig.register_for_auto_class()
BertModel.register_for_auto_class("AutoModel")
BertForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
BertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
BertForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
BertForQuestionAnswering.register_for_auto_class("AutoModelForQuestionAnswering")
BertForMultipleChoice.register_for_auto_class("AutoModelForMultipleChoice")
BertForPreTraining.register_for_auto_class("AutoModelForPreTraining")
BertForNextSentencePrediction.register_for_auto_class("AutoModelForNextSentencePrediction")
BertLMHeadModel.register_for_auto_class("AutoModelForCausalLM")
register_peft_defaults()

__all__ = [
    "BertForMaskedLM",
    "BertForMultipleChoice",
    "BertForNextSentencePrediction",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertLMHeadModel",
    "BertModel",
    "BertPreTrainedModel",
    "PEFT_DEFAULT_TARGET_MODULES",
    "alibi_slopes_list",
    "register_peft_defaults",
]
