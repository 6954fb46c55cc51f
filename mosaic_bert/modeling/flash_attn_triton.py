"""Variable-length FlashAttention with in-kernel ALiBi, written in Triton 3.x.

Self-contained remote-code module: it imports only ``torch`` and (optionally)
``triton``.  When triton is missing, or there is no GPU, the module still
imports; :func:`is_available` returns ``False`` and the attention functions
raise a ``RuntimeError`` that says so.

Interface (flash-attn 2 compatible subset)::

    flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k,
                           max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, alibi_slopes=None)
    flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0,
                                     softmax_scale=None, causal=False,
                                     alibi_slopes=None)

* ``q``: ``(total_q, nheads, headdim)``, ``k``/``v``: ``(total_k, nheads, headdim)``,
  ``qkv``: ``(total, 3, nheads, headdim)``; fp16 or bf16, on a CUDA device, last
  dimension contiguous (other strides are free: views of a packed qkv work).
* ``cu_seqlens``: int32 ``(batch + 1,)`` cumulative sequence starts on the same
  device (int64 is accepted and converted).  Zero-length sequences are allowed.
* ``alibi_slopes``: fp32 ``(nheads,)`` or ``(batch, nheads)`` (converted to fp32
  contiguous on the device if needed).  The bias added to the scaled scores is
  ``-slope * |i - j|`` (non-causal) and ``-slope * |i + seqlen_k - seqlen_q - j|``
  (causal, flash-attn 2 convention, bottom-right aligned mask).
* ``headdim`` 16..256 (any value, padded to a power of two inside the kernel).
* ``dropout_p > 0`` is not supported: use the PyTorch attention path.

Compile-safe entry point: :func:`varlen_attention` (packed qkv, ALiBi slopes)
calls the custom op ``torch.ops.mosaic_bert.varlen_alibi_attn_fwd_v1`` (with its
``..._bwd_v1``), registered once per process at import.  torch.compile and
torch.export treat it as one opaque node with fake shapes and a backward; it runs
the kernels below for fp16/bf16 on CUDA and the same math in PyTorch otherwise.

Forward: one program per (query block, sequence, head); online softmax in the
log2 domain (``exp2`` with ``log2(e)`` folded into the scale and slopes); the
log-sum-exp is kept in fp32 for the backward.  Backward: ``delta = rowsum(dO*O)``
pre-pass, a dK/dV kernel that loops over query blocks and a dQ kernel that loops
over key blocks (deterministic, no atomics); self-attention whose sequences are
all at most 128 long runs one fused kernel per (sequence, head) instead.

The file also holds the GeGLU + dropout custom op of the MLP in training
(:func:`geglu_dropout`, ``torch.ops.mosaic_bert.geglu_dropout_fwd_v2``/``bwd_v2``).
"""

import math
import os
from typing import Optional

import torch

try:  # guarded: the module must import without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised by a subprocess test
    triton = None
    tl = None

HAS_TRITON = triton is not None

__all__ = [
    "HAS_TRITON",
    "is_available",
    "flash_attn_varlen_func",
    "flash_attn_varlen_qkvpacked_func",
    "varlen_padded_layout",
    "varlen_attention",
    "geglu_dropout",
    "reference_attn_fwd",
    "reference_attn_bwd",
]

_LOG2E = 1.4426950408889634
# Self-attention backward with every sequence at most this long runs as one
# fused kernel (dQ, dK, dV and delta in one pass); 0 switches it off.
_FUSED_BWD_MAX_SEQLEN = int(os.environ.get("MOSAIC_FA_FUSED_BWD_MAX", "128"))

# Tests set this to True: outputs are then pre-filled with NaN instead of left
# uninitialised, so that an unwritten element shows up.
_POISON_OUTPUTS = False


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available():
    """True when the Triton kernels can run here (triton present and a CUDA
    GPU, or triton's CPU interpreter enabled with ``TRITON_INTERPRET=1``)."""
    if not HAS_TRITON:
        return False
    return _interpreting() or torch.cuda.is_available()


def _seq_bucket(n):
    """Bucketed max sequence length used as an autotune key."""
    n = max(int(n), 1)
    return min(1 << (n - 1).bit_length(), 4096)


if HAS_TRITON:

    # ------------------------------------------------------------------
    # autotune configurations
    # ------------------------------------------------------------------
    def _cfgs(entries):
        return [
            triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for (m, n, w, s) in entries
        ]

    if _interpreting():
        # one small config: the CPU interpreter is slow
        _FWD_CONFIGS = _cfgs([(16, 16, 4, 1)])
        _BWD_KV_CONFIGS = _cfgs([(16, 16, 4, 1)])
        _BWD_Q_CONFIGS = _cfgs([(16, 16, 4, 1)])
        _BWD_FUSED_CONFIGS = [triton.Config({"BLOCK_M": 16}, num_warps=4, num_stages=1)]
    else:
        # (BLOCK_M, BLOCK_N, num_warps, num_stages), chosen for Hopper (H100).
        # The first entry of each list is the default used when autotuning is
        # switched off with MOSAIC_FA_TUNE=0 (saves compile time in tests).
        _FWD_CONFIGS = _cfgs([
            (128, 64, 4, 3),
            (128, 64, 8, 3),
            (128, 128, 8, 3),
            (64, 64, 4, 3),
            (64, 128, 4, 2),
        ])
        # dK/dV kernel: BLOCK_N keys are resident, BLOCK_M queries stream
        _BWD_KV_CONFIGS = _cfgs([
            (64, 128, 8, 2),
            (32, 128, 4, 3),
            (64, 64, 4, 3),
            (32, 64, 4, 2),
        ])
        # dQ kernel: BLOCK_M queries are resident, BLOCK_N keys stream
        _BWD_Q_CONFIGS = _cfgs([
            (128, 64, 8, 2),
            (64, 64, 4, 3),
            (128, 32, 4, 3),
            (64, 32, 4, 2),
        ])
        # fused short-sequence backward: BLOCK_N (all keys) comes from the
        # caller; BLOCK_M queries stream
        _BWD_FUSED_CONFIGS = [triton.Config({"BLOCK_M": m}, num_warps=w, num_stages=st)
                              for (m, w, st) in ((64, 4, 2), (64, 8, 2), (32, 4, 2), (128, 8, 2),
                                                 (16, 4, 2), (32, 4, 1), (64, 4, 1), (32, 8, 2))]
        if os.environ.get("MOSAIC_FA_TUNE", "1") == "0":
            _BWD_FUSED_CONFIGS = _BWD_FUSED_CONFIGS[:1]
            _FWD_CONFIGS = _FWD_CONFIGS[:1]
            _BWD_KV_CONFIGS = _BWD_KV_CONFIGS[:1]
            _BWD_Q_CONFIGS = _BWD_Q_CONFIGS[:1]

    _KEY = ["HEAD_DIM", "seq_bucket", "CAUSAL", "HAS_ALIBI"]

    # ------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------
    @triton.jit
    def _as_0d(x):
        # Called only under INTERPRET (the compiled kernels never see it).
        # Triton 3.6's interpreter keeps program ids and loaded scalars as
        # 1-element arrays and turns a `range` bound into an int with int(),
        # which NumPy >= 2.4 refuses for arrays that are not 0-d: make the
        # bound's array 0-d in place (no assignment: the interpreter rewrites
        # assignments into tensor conversions).
        t = tl.full([1], x, tl.int32)
        setattr(t.handle, "data", t.handle.data.reshape(()))
        return t

    @triton.jit
    def _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt,
                   offs_m, offs_n, offs_d, lo, hi, seqlen_k, qk_scale, slope,
                   bias_off,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_N: tl.constexpr, MASK_K: tl.constexpr,
                   CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
                   INTERPRET: tl.constexpr):
        if INTERPRET:
            lo = _as_0d(lo)
            hi = _as_0d(hi)
        for start_n in range(lo, hi, BLOCK_N):
            cols = start_n + offs_n
            if MASK_K:
                kmask = cols[:, None] < seqlen_k
                if BLOCK_D != HEAD_DIM:
                    kmask = kmask & (offs_d[None, :] < HEAD_DIM)
                k = tl.load(k_ptrs + start_n * stride_kt, mask=kmask, other=0.0)
                v = tl.load(v_ptrs + start_n * stride_vt, mask=kmask, other=0.0)
            else:
                if BLOCK_D != HEAD_DIM:
                    dmask = offs_d[None, :] < HEAD_DIM
                    k = tl.load(k_ptrs + start_n * stride_kt, mask=dmask, other=0.0)
                    v = tl.load(v_ptrs + start_n * stride_vt, mask=dmask, other=0.0)
                else:
                    k = tl.load(k_ptrs + start_n * stride_kt)
                    v = tl.load(v_ptrs + start_n * stride_vt)
            if INTERPRET:
                qk = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)))
            else:
                qk = tl.dot(q, tl.trans(k))
            s = qk * qk_scale
            if HAS_ALIBI:
                dist = (offs_m[:, None] + bias_off) - cols[None, :]
                s = s - slope * tl.abs(dist).to(tl.float32)
            if MASK_K:
                valid = cols[None, :] < seqlen_k
                if CAUSAL:
                    valid = valid & (cols[None, :] <= offs_m[:, None] + bias_off)
                s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            if INTERPRET:
                acc = tl.dot(p, v.to(tl.float32), acc)
            else:
                acc = tl.dot(p.to(v.dtype), v, acc)
            m_i = m_new
        return acc, l_i, m_i

    @triton.autotune(configs=_FWD_CONFIGS, key=_KEY)
    @triton.jit
    def _fwd_kernel(Q, K, V, O, LSE, SLOPES, CU_Q, CU_K,
                    stride_qt, stride_qh, stride_kt, stride_kh,
                    stride_vt, stride_vh, stride_ot, stride_oh,
                    stride_lse_h, stride_slope_b,
                    nheads, qk_scale, seq_bucket,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
                    INTERPRET: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // nheads
        h = pid_bh % nheads
        q_start = tl.load(CU_Q + b)
        seqlen_q = tl.load(CU_Q + b + 1) - q_start
        start_m = pid_m * BLOCK_M
        if start_m >= seqlen_q:
            return
        k_start = tl.load(CU_K + b)
        seqlen_k = tl.load(CU_K + b + 1) - k_start

        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        q_start64 = q_start.to(tl.int64)
        k_start64 = k_start.to(tl.int64)

        q_ptrs = (Q + h * stride_qh + (q_start64 + offs_m[:, None]) * stride_qt
                  + offs_d[None, :])
        k_ptrs = (K + h * stride_kh + (k_start64 + offs_n[:, None]) * stride_kt
                  + offs_d[None, :])
        v_ptrs = (V + h * stride_vh + (k_start64 + offs_n[:, None]) * stride_vt
                  + offs_d[None, :])
        qmask = offs_m[:, None] < seqlen_q
        if BLOCK_D != HEAD_DIM:
            qmask = qmask & (offs_d[None, :] < HEAD_DIM)
        q = tl.load(q_ptrs, mask=qmask, other=0.0)

        if HAS_ALIBI:
            slope = tl.load(SLOPES + b * stride_slope_b + h).to(tl.float32) * 1.4426950408889634
        else:
            slope = 0.0
        if CAUSAL:
            bias_off = seqlen_k - seqlen_q
        else:
            bias_off = seqlen_k * 0

        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        if CAUSAL:
            hi = tl.minimum(seqlen_k, start_m + BLOCK_M + bias_off)
            hi = tl.maximum(hi, 0)
            acc, l_i, m_i = _fwd_inner(
                acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt,
                offs_m, offs_n, offs_d, 0, hi, seqlen_k, qk_scale, slope, bias_off,
                HEAD_DIM, BLOCK_D, BLOCK_N, True, True, HAS_ALIBI, INTERPRET)
        else:
            n_full = (seqlen_k // BLOCK_N) * BLOCK_N
            acc, l_i, m_i = _fwd_inner(
                acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt,
                offs_m, offs_n, offs_d, 0, n_full, seqlen_k, qk_scale, slope, bias_off,
                HEAD_DIM, BLOCK_D, BLOCK_N, False, False, HAS_ALIBI, INTERPRET)
            acc, l_i, m_i = _fwd_inner(
                acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt,
                offs_m, offs_n, offs_d, n_full, seqlen_k, seqlen_k, qk_scale, slope,
                bias_off,
                HEAD_DIM, BLOCK_D, BLOCK_N, True, False, HAS_ALIBI, INTERPRET)

        empty = l_i == 0.0
        l_safe = tl.where(empty, 1.0, l_i)
        acc = acc / l_safe[:, None]
        lse = tl.where(empty, float("inf"), m_i + tl.log2(l_safe))
        o_ptrs = (O + h * stride_oh + (q_start64 + offs_m[:, None]) * stride_ot
                  + offs_d[None, :])
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=qmask)
        tl.store(LSE + h * stride_lse_h + q_start + offs_m, lse,
                 mask=offs_m < seqlen_q)

    # ------------------------------------------------------------------
    # backward
    # ------------------------------------------------------------------
    @triton.jit
    def _bwd_preprocess(O, DO, DELTA, stride_ot, stride_oh, stride_dot, stride_doh,
                        stride_delta_h, total,
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_T: tl.constexpr):
        pid_t = tl.program_id(0)
        h = tl.program_id(1)
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (offs_t[:, None] < total) & (offs_d[None, :] < HEAD_DIM)
        t64 = offs_t.to(tl.int64)
        o = tl.load(O + h * stride_oh + t64[:, None] * stride_ot + offs_d[None, :],
                    mask=mask, other=0.0).to(tl.float32)
        do = tl.load(DO + h * stride_doh + t64[:, None] * stride_dot + offs_d[None, :],
                     mask=mask, other=0.0).to(tl.float32)
        delta = tl.sum(o * do, 1)
        tl.store(DELTA + h * stride_delta_h + offs_t, delta, mask=offs_t < total)

    @triton.autotune(configs=_BWD_KV_CONFIGS, key=_KEY)
    @triton.jit
    def _bwd_kv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, SLOPES, CU_Q, CU_K,
                       stride_qt, stride_qh, stride_kt, stride_kh,
                       stride_vt, stride_vh, stride_dot, stride_doh,
                       stride_dkt, stride_dkh, stride_dvt, stride_dvh,
                       stride_lse_h, stride_slope_b,
                       nheads, qk_scale, sm_scale, seq_bucket,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                       CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
                       INTERPRET: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // nheads
        h = pid_bh % nheads
        k_start = tl.load(CU_K + b)
        seqlen_k = tl.load(CU_K + b + 1) - k_start
        start_n = pid_n * BLOCK_N
        if start_n >= seqlen_k:
            return
        q_start = tl.load(CU_Q + b)
        seqlen_q = tl.load(CU_Q + b + 1) - q_start

        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        q_start64 = q_start.to(tl.int64)
        k_start64 = k_start.to(tl.int64)

        kmask = offs_n[:, None] < seqlen_k
        if BLOCK_D != HEAD_DIM:
            kmask = kmask & (offs_d[None, :] < HEAD_DIM)
        k = tl.load(K + h * stride_kh + (k_start64 + offs_n[:, None]) * stride_kt
                    + offs_d[None, :], mask=kmask, other=0.0)
        v = tl.load(V + h * stride_vh + (k_start64 + offs_n[:, None]) * stride_vt
                    + offs_d[None, :], mask=kmask, other=0.0)
        if INTERPRET:
            k = k.to(tl.float32)
            v = v.to(tl.float32)

        if HAS_ALIBI:
            slope = tl.load(SLOPES + b * stride_slope_b + h).to(tl.float32) * 1.4426950408889634
        else:
            slope = 0.0
        if CAUSAL:
            bias_off = seqlen_k - seqlen_q
            # first query row that can see key start_n: i + bias_off >= start_n
            lo = tl.maximum(start_n - bias_off, 0)
            lo = (lo // BLOCK_M) * BLOCK_M
        else:
            bias_off = seqlen_k * 0
            lo = seqlen_k * 0

        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        q_ptrs = (Q + h * stride_qh + (q_start64 + offs_m[:, None]) * stride_qt
                  + offs_d[None, :])
        do_ptrs = (DO + h * stride_doh + (q_start64 + offs_m[:, None]) * stride_dot
                   + offs_d[None, :])
        lse_ptrs = LSE + h * stride_lse_h + q_start + offs_m
        delta_ptrs = DELTA + h * stride_lse_h + q_start + offs_m

        hi = seqlen_q
        if INTERPRET:
            lo = _as_0d(lo)
            hi = _as_0d(hi)
        for start_m in range(lo, hi, BLOCK_M):
            rows = start_m + offs_m
            rmask = rows < seqlen_q
            qmask = rmask[:, None]
            if BLOCK_D != HEAD_DIM:
                qmask = qmask & (offs_d[None, :] < HEAD_DIM)
            q = tl.load(q_ptrs + start_m * stride_qt, mask=qmask, other=0.0)
            do = tl.load(do_ptrs + start_m * stride_dot, mask=qmask, other=0.0)
            lse = tl.load(lse_ptrs + start_m, mask=rmask, other=float("inf"))
            delta = tl.load(delta_ptrs + start_m, mask=rmask, other=0.0)
            if INTERPRET:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            # transposed scores: [BLOCK_N, BLOCK_M]
            sT = tl.dot(k, tl.trans(q)) * qk_scale
            if HAS_ALIBI:
                dist = (rows[None, :] + bias_off) - offs_n[:, None]
                sT = sT - slope * tl.abs(dist).to(tl.float32)
            pT = tl.exp2(sT - lse[None, :])
            if CAUSAL:
                pT = tl.where(offs_n[:, None] <= rows[None, :] + bias_off, pT, 0.0)
            dv = tl.dot(pT.to(do.dtype), do, dv)
            dpT = tl.dot(v, tl.trans(do))
            dsT = pT * (dpT - delta[None, :])
            dk = tl.dot(dsT.to(q.dtype), q, dk)

        dk = dk * sm_scale
        tl.store(DK + h * stride_dkh + (k_start64 + offs_n[:, None]) * stride_dkt
                 + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kmask)
        tl.store(DV + h * stride_dvh + (k_start64 + offs_n[:, None]) * stride_dvt
                 + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kmask)

    @triton.autotune(configs=_BWD_Q_CONFIGS, key=_KEY)
    @triton.jit
    def _bwd_q_kernel(Q, K, V, DO, DQ, LSE, DELTA, SLOPES, CU_Q, CU_K,
                      stride_qt, stride_qh, stride_kt, stride_kh,
                      stride_vt, stride_vh, stride_dot, stride_doh,
                      stride_dqt, stride_dqh,
                      stride_lse_h, stride_slope_b,
                      nheads, qk_scale, sm_scale, seq_bucket,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                      CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
                      INTERPRET: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // nheads
        h = pid_bh % nheads
        q_start = tl.load(CU_Q + b)
        seqlen_q = tl.load(CU_Q + b + 1) - q_start
        start_m = pid_m * BLOCK_M
        if start_m >= seqlen_q:
            return
        k_start = tl.load(CU_K + b)
        seqlen_k = tl.load(CU_K + b + 1) - k_start

        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        q_start64 = q_start.to(tl.int64)
        k_start64 = k_start.to(tl.int64)

        rmask = offs_m < seqlen_q
        qmask = rmask[:, None]
        if BLOCK_D != HEAD_DIM:
            qmask = qmask & (offs_d[None, :] < HEAD_DIM)
        q = tl.load(Q + h * stride_qh + (q_start64 + offs_m[:, None]) * stride_qt
                    + offs_d[None, :], mask=qmask, other=0.0)
        do = tl.load(DO + h * stride_doh + (q_start64 + offs_m[:, None]) * stride_dot
                     + offs_d[None, :], mask=qmask, other=0.0)
        lse = tl.load(LSE + h * stride_lse_h + q_start + offs_m, mask=rmask,
                      other=float("inf"))
        delta = tl.load(DELTA + h * stride_lse_h + q_start + offs_m, mask=rmask,
                        other=0.0)
        if INTERPRET:
            q = q.to(tl.float32)
            do = do.to(tl.float32)

        if HAS_ALIBI:
            slope = tl.load(SLOPES + b * stride_slope_b + h).to(tl.float32) * 1.4426950408889634
        else:
            slope = 0.0
        if CAUSAL:
            bias_off = seqlen_k - seqlen_q
            hi = tl.minimum(seqlen_k, start_m + BLOCK_M + bias_off)
            hi = tl.maximum(hi, 0)
        else:
            bias_off = seqlen_k * 0
            hi = seqlen_k

        k_ptrs = (K + h * stride_kh + (k_start64 + offs_n[:, None]) * stride_kt
                  + offs_d[None, :])
        v_ptrs = (V + h * stride_vh + (k_start64 + offs_n[:, None]) * stride_vt
                  + offs_d[None, :])
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        if INTERPRET:
            hi = _as_0d(hi)
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + offs_n
            kmask = cols[:, None] < seqlen_k
            if BLOCK_D != HEAD_DIM:
                kmask = kmask & (offs_d[None, :] < HEAD_DIM)
            k = tl.load(k_ptrs + start_n * stride_kt, mask=kmask, other=0.0)
            v = tl.load(v_ptrs + start_n * stride_vt, mask=kmask, other=0.0)
            if INTERPRET:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            if HAS_ALIBI:
                dist = (offs_m[:, None] + bias_off) - cols[None, :]
                s = s - slope * tl.abs(dist).to(tl.float32)
            p = tl.exp2(s - lse[:, None])
            valid = cols[None, :] < seqlen_k
            if CAUSAL:
                valid = valid & (cols[None, :] <= offs_m[:, None] + bias_off)
            p = tl.where(valid, p, 0.0)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(k.dtype), k, dq)

        dq = dq * sm_scale
        tl.store(DQ + h * stride_dqh + (q_start64 + offs_m[:, None]) * stride_dqt
                 + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=qmask)


    @triton.autotune(configs=_BWD_FUSED_CONFIGS, key=_KEY)
    @triton.jit
    def _bwd_fused_kernel(Q, K, V, O, DO, DQ, DK, DV, LSE, SLOPES, CU,
                          stride_qt, stride_qh, stride_kt, stride_kh,
                          stride_vt, stride_vh, stride_ot, stride_oh,
                          stride_dot, stride_doh, stride_dqt, stride_dqh,
                          stride_dkt, stride_dkh, stride_dvt, stride_dvh,
                          stride_lse_h, stride_slope_b,
                          nheads, qk_scale, sm_scale, seq_bucket,
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                          CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
                          INTERPRET: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        # Short self-attention sequences (every length <= BLOCK_N, non-causal):
        # one program per (sequence, head) holds all keys, streams the queries
        # in BLOCK_M chunks and writes dQ (complete: every key is here), dK and
        # dV; delta = rowsum(dO * O) is computed in place (no pre-pass).
        pid_bh = tl.program_id(0)
        b = pid_bh // nheads
        h = pid_bh % nheads
        start = tl.load(CU + b)
        seqlen = tl.load(CU + b + 1) - start
        if seqlen <= 0:
            return
        start64 = start.to(tl.int64)
        offs_n = tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        kmask = offs_n[:, None] < seqlen
        if BLOCK_D != HEAD_DIM:
            kmask = kmask & (offs_d[None, :] < HEAD_DIM)
        k = tl.load(K + h * stride_kh + (start64 + offs_n[:, None]) * stride_kt
                    + offs_d[None, :], mask=kmask, other=0.0)
        v = tl.load(V + h * stride_vh + (start64 + offs_n[:, None]) * stride_vt
                    + offs_d[None, :], mask=kmask, other=0.0)
        if INTERPRET:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        if HAS_ALIBI:
            slope = tl.load(SLOPES + b * stride_slope_b + h).to(tl.float32) * 1.4426950408889634
        else:
            slope = 0.0
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        hi = seqlen
        if INTERPRET:
            hi = _as_0d(hi)
        for start_m in range(0, hi, BLOCK_M):
            rows = start_m + offs_m
            rmask = rows < seqlen
            qmask = rmask[:, None]
            if BLOCK_D != HEAD_DIM:
                qmask = qmask & (offs_d[None, :] < HEAD_DIM)
            t = start64 + rows[:, None]
            q = tl.load(Q + h * stride_qh + t * stride_qt + offs_d[None, :], mask=qmask, other=0.0)
            do = tl.load(DO + h * stride_doh + t * stride_dot + offs_d[None, :], mask=qmask, other=0.0)
            o = tl.load(O + h * stride_oh + t * stride_ot + offs_d[None, :], mask=qmask, other=0.0)
            lse = tl.load(LSE + h * stride_lse_h + start + rows, mask=rmask, other=float("inf"))
            delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
            if INTERPRET:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            s = tl.dot(q, tl.trans(k)) * qk_scale  # [BLOCK_M, BLOCK_N]
            if HAS_ALIBI:
                s = s - slope * tl.abs(rows[:, None] - offs_n[None, :]).to(tl.float32)
            p = tl.exp2(s - lse[:, None])
            p = tl.where(offs_n[None, :] < seqlen, p, 0.0)
            dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(k.dtype), k) * sm_scale
            tl.store(DQ + h * stride_dqh + t * stride_dqt + offs_d[None, :],
                     dq.to(DQ.dtype.element_ty), mask=qmask)
            dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk)
        dk = dk * sm_scale
        tl.store(DK + h * stride_dkh + (start64 + offs_n[:, None]) * stride_dkt
                 + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kmask)
        tl.store(DV + h * stride_dvh + (start64 + offs_n[:, None]) * stride_dvt
                 + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kmask)


# ----------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------
def _require_available():
    if not HAS_TRITON:
        raise RuntimeError(
            "mosaic_bert.modeling.flash_attn_triton: triton is not installed; use the "
            "PyTorch attention path instead (pip install triton to enable)."
        )
    if not is_available():
        raise RuntimeError(
            "mosaic_bert.modeling.flash_attn_triton: no CUDA GPU available; the Triton "
            "kernels need a GPU (or TRITON_INTERPRET=1 for testing)."
        )


def _check_dropout(dropout_p):
    if dropout_p is not None and float(dropout_p) > 0.0:
        raise ValueError(
            "flash_attn_triton does not implement attention dropout "
            f"(dropout_p={dropout_p}); use the PyTorch attention path when "
            "attention dropout is active (training with attention_probs_dropout_prob > 0)."
        )


def _empty(shape, like, dtype=None):
    dtype = like.dtype if dtype is None else dtype
    if _POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def _check_qkv(q, k, v, cu_seqlens_q, cu_seqlens_k):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor")
        if t.dim() != 3:
            raise ValueError(
                f"{name} must have shape (total, nheads, headdim), got {tuple(t.shape)}")
        if t.dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(
                f"{name} must be float16 or bfloat16, got {t.dtype} (fp32 is not "
                "supported by the Triton kernel; cast or use the PyTorch path)")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[1:] != k.shape[1:]:
        raise ValueError(
            f"q (nheads, headdim)={tuple(q.shape[1:])} must match k {tuple(k.shape[1:])}")
    d = q.shape[2]
    if d < 1 or d > 256:
        raise ValueError(f"headdim must be in 1..256, got {d}")
    dev = q.device
    if not _interpreting() and dev.type != "cuda":
        raise ValueError(f"q must be on a CUDA device, got {dev}")
    for name, t in (("k", k), ("v", v), ("cu_seqlens_q", cu_seqlens_q),
                    ("cu_seqlens_k", cu_seqlens_k)):
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but q is on {dev}")
    for name, c in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if c.dim() != 1 or c.numel() < 2:
            raise ValueError(f"{name} must have shape (batch + 1,), got {tuple(c.shape)}")
        if c.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be int32, got {c.dtype}")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError("cu_seqlens_q and cu_seqlens_k must have the same length")


def _prep_slopes(alibi_slopes, batch, nheads, device):
    if alibi_slopes is None:
        return None, 0
    if not isinstance(alibi_slopes, torch.Tensor):
        raise TypeError("alibi_slopes must be a torch.Tensor")
    s = alibi_slopes
    if s.device != device:
        raise ValueError(f"alibi_slopes is on {s.device} but q is on {device}")
    if s.dim() == 1 and s.shape[0] == nheads:
        stride_b = 0
    elif s.dim() == 2 and tuple(s.shape) == (batch, nheads):
        stride_b = nheads
    else:
        raise ValueError(
            f"alibi_slopes must have shape ({nheads},) or ({batch}, {nheads}), "
            f"got {tuple(s.shape)}")
    s = s.detach().to(torch.float32).contiguous()
    return s, stride_b


def _last_dim_contig(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _fwd(q, k, v, cu_q, cu_k, max_seqlen_q, max_seqlen_k, sm_scale, causal,
         slopes, stride_slope_b, out=None):
    total_q, nheads, d = q.shape
    batch = cu_q.numel() - 1
    block_d = max(16, triton.next_power_of_2(d))
    if out is None:
        out = _empty((total_q, nheads, d), q)
    lse = _empty((nheads, total_q), q, torch.float32)
    if total_q == 0 or batch == 0 or max_seqlen_q == 0:
        return out, lse
    has_alibi = slopes is not None
    grid = lambda META: (triton.cdiv(max_seqlen_q, META["BLOCK_M"]), batch * nheads)
    _fwd_kernel[grid](
        q, k, v, out, lse, slopes if has_alibi else q, cu_q, cu_k,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        lse.stride(0), stride_slope_b,
        nheads, sm_scale * _LOG2E, _seq_bucket(max(max_seqlen_q, max_seqlen_k)),
        HEAD_DIM=d, BLOCK_D=block_d, CAUSAL=bool(causal), HAS_ALIBI=has_alibi,
        INTERPRET=_interpreting(),
    )
    return out, lse


def _bwd_fused(do, q, k, v, out, lse, cu_q, max_seqlen, sm_scale, slopes, stride_slope_b, dq, dk, dv):
    """Short self-attention (every length <= _FUSED_BWD_MAX_SEQLEN): dQ, dK, dV and delta in one kernel per
    (sequence, head)."""
    batch, nheads, d = cu_q.numel() - 1, q.shape[1], q.shape[2]
    has_alibi = slopes is not None
    _bwd_fused_kernel[(batch * nheads,)](
        q, k, v, out, do, dq, dk, dv, lse, slopes if has_alibi else q, cu_q,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        do.stride(0), do.stride(1), dq.stride(0), dq.stride(1),
        dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        lse.stride(0), stride_slope_b,
        nheads, sm_scale * _LOG2E, sm_scale, _seq_bucket(max_seqlen),
        HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), CAUSAL=False, HAS_ALIBI=has_alibi,
        INTERPRET=_interpreting(), BLOCK_N=max(16, triton.next_power_of_2(max_seqlen)),
    )


def _bwd(do, q, k, v, out, lse, cu_q, cu_k, max_seqlen_q, max_seqlen_k, sm_scale,
         causal, slopes, stride_slope_b, dq, dk, dv):
    total_q, nheads, d = q.shape
    total_k = k.shape[0]
    batch = cu_q.numel() - 1
    block_d = max(16, triton.next_power_of_2(d))
    do = _last_dim_contig(do)
    has_alibi = slopes is not None
    if total_q == 0 or batch == 0:
        dq.zero_()
        dk.zero_()
        dv.zero_()
        return
    # keys of zero-length query sequences get zero gradient: the dK/dV kernel writes every key row whose sequence has
    # seqlen_k > 0 (its loop then does not run and writes zeros), so nothing needs zeroing here.
    if (not causal and cu_q is cu_k and max_seqlen_q == max_seqlen_k
            and 0 < max_seqlen_q <= _FUSED_BWD_MAX_SEQLEN):
        _bwd_fused(do, q, k, v, out, lse, cu_q, max_seqlen_q, sm_scale, slopes, stride_slope_b, dq, dk, dv)
        return
    delta = _empty((nheads, total_q), q, torch.float32)
    pre_block = 64
    _bwd_preprocess[(triton.cdiv(total_q, pre_block), nheads)](
        out, do, delta, out.stride(0), out.stride(1), do.stride(0), do.stride(1),
        delta.stride(0), total_q,
        HEAD_DIM=d, BLOCK_D=block_d, BLOCK_T=pre_block,
    )
    bucket = _seq_bucket(max(max_seqlen_q, max_seqlen_k))
    sl = slopes if has_alibi else q
    if total_k > 0 and max_seqlen_k > 0:
        grid_kv = lambda META: (triton.cdiv(max_seqlen_k, META["BLOCK_N"]), batch * nheads)
        _bwd_kv_kernel[grid_kv](
            q, k, v, do, dk, dv, lse, delta, sl, cu_q, cu_k,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            v.stride(0), v.stride(1), do.stride(0), do.stride(1),
            dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
            lse.stride(0), stride_slope_b,
            nheads, sm_scale * _LOG2E, sm_scale, bucket,
            HEAD_DIM=d, BLOCK_D=block_d, CAUSAL=bool(causal), HAS_ALIBI=has_alibi,
            INTERPRET=_interpreting(),
        )
    if max_seqlen_q > 0:
        grid_q = lambda META: (triton.cdiv(max_seqlen_q, META["BLOCK_M"]), batch * nheads)
        _bwd_q_kernel[grid_q](
            q, k, v, do, dq, lse, delta, sl, cu_q, cu_k,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            v.stride(0), v.stride(1), do.stride(0), do.stride(1),
            dq.stride(0), dq.stride(1),
            lse.stride(0), stride_slope_b,
            nheads, sm_scale * _LOG2E, sm_scale, bucket,
            HEAD_DIM=d, BLOCK_D=block_d, CAUSAL=bool(causal), HAS_ALIBI=has_alibi,
            INTERPRET=_interpreting(),
        )


class _FlashAttnVarlen(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_seqlen_q, max_seqlen_k, sm_scale,
                causal, slopes, stride_slope_b):
        out, lse = _fwd(q, k, v, cu_q, cu_k, max_seqlen_q, max_seqlen_k, sm_scale,
                        causal, slopes, stride_slope_b)
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, slopes)
        ctx.meta = (max_seqlen_q, max_seqlen_k, sm_scale, causal, stride_slope_b)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, cu_q, cu_k, slopes = ctx.saved_tensors
        max_seqlen_q, max_seqlen_k, sm_scale, causal, stride_slope_b = ctx.meta
        dq = _empty(q.shape, q)
        dk = _empty(k.shape, k)
        dv = _empty(v.shape, v)
        _bwd(dout, q, k, v, out, lse, cu_q, cu_k, max_seqlen_q, max_seqlen_k,
             sm_scale, causal, slopes, stride_slope_b, dq, dk, dv)
        return dq, dk, dv, None, None, None, None, None, None, None, None


class _FlashAttnVarlenQKVPacked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, cu, max_seqlen, sm_scale, causal, slopes, stride_slope_b):
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        out, lse = _fwd(q, k, v, cu, cu, max_seqlen, max_seqlen, sm_scale, causal,
                        slopes, stride_slope_b)
        ctx.save_for_backward(qkv, out, lse, cu, slopes)
        ctx.meta = (max_seqlen, sm_scale, causal, stride_slope_b)
        return out

    @staticmethod
    def backward(ctx, dout):
        qkv, out, lse, cu, slopes = ctx.saved_tensors
        max_seqlen, sm_scale, causal, stride_slope_b = ctx.meta
        dqkv = _empty(qkv.shape, qkv)  # written in place through strided views
        _bwd(dout, qkv[:, 0], qkv[:, 1], qkv[:, 2], out, lse, cu, cu, max_seqlen,
             max_seqlen, sm_scale, causal, slopes, stride_slope_b,
             dqkv[:, 0], dqkv[:, 1], dqkv[:, 2])
        return dqkv, None, None, None, None, None, None


def varlen_padded_layout(cu_seqlens: torch.Tensor, total: int, max_seqlen: int):
    """Where the ``total`` unpadded tokens sit when every sequence is padded to
    ``max_seqlen``: ``(pad_index (total,) into the (n_seqs * max_seqlen) grid,
    key_valid (n_seqs, max_seqlen) bool)``.  Key 0 of a zero-length sequence
    counts as valid so that no softmax row is all ``-inf`` (its outputs are
    never gathered).  No host sync: sizes come from shapes and arguments."""
    cu = cu_seqlens.long()
    seqlens = cu[1:] - cu[:-1]
    # seq_id[t] = the number of sequences ending at or before token t (a cumsum of end marks, which the ONNX
    # exporter translates, unlike repeat_interleave with output_size); empty sequences are counted, never holding t
    ends = torch.zeros(total + 1, dtype=torch.long, device=cu.device).index_add(0, cu[1:], torch.ones_like(cu[1:]))
    seq_id = ends.cumsum(0)[:total]
    pos = torch.arange(total, device=cu.device) - cu[seq_id]
    cols = torch.arange(max_seqlen, device=cu.device)[None, :]
    key_valid = (cols < seqlens[:, None]) | (cols == 0)
    return seq_id * max_seqlen + pos, key_valid


def _prep_cu(cu):
    if cu.dtype != torch.int32:
        cu = cu.to(torch.int32)
    return cu.contiguous()


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                           max_seqlen_k, dropout_p=0.0, softmax_scale=None,
                           causal=False, alibi_slopes=None):
    """Varlen attention on unpadded tokens. Returns ``(total_q, nheads, headdim)``.

    See the module docstring for shapes, dtypes and the ALiBi convention."""
    _check_dropout(dropout_p)
    _require_available()
    _check_qkv(q, k, v, cu_seqlens_q, cu_seqlens_k)
    q, k, v = _last_dim_contig(q), _last_dim_contig(k), _last_dim_contig(v)
    cu_q, cu_k = _prep_cu(cu_seqlens_q), _prep_cu(cu_seqlens_k)
    batch = cu_q.numel() - 1
    nheads, d = q.shape[1], q.shape[2]
    sm_scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(d)
    slopes, stride_b = _prep_slopes(alibi_slopes, batch, nheads, q.device)
    return _FlashAttnVarlen.apply(q, k, v, cu_q, cu_k, int(max_seqlen_q),
                                  int(max_seqlen_k), sm_scale, bool(causal), slopes,
                                  stride_b)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0,
                                     softmax_scale=None, causal=False,
                                     alibi_slopes=None):
    """Varlen self-attention on a packed ``(total, 3, nheads, headdim)`` tensor.
    Returns ``(total, nheads, headdim)``; the backward writes ``dqkv`` directly."""
    _check_dropout(dropout_p)
    _require_available()
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(
            "qkv must have shape (total, 3, nheads, headdim), got "
            f"{tuple(qkv.shape) if isinstance(qkv, torch.Tensor) else type(qkv)}")
    qkv = _last_dim_contig(qkv)
    _check_qkv(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens)
    cu = _prep_cu(cu_seqlens)
    batch = cu.numel() - 1
    nheads, d = qkv.shape[2], qkv.shape[3]
    sm_scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(d)
    slopes, stride_b = _prep_slopes(alibi_slopes, batch, nheads, qkv.device)
    return _FlashAttnVarlenQKVPacked.apply(qkv, cu, int(max_seqlen), sm_scale,
                                           bool(causal), slopes, stride_b)


# ----------------------------------------------------------------------
# The packed varlen ALiBi attention as a PyTorch custom op
# ----------------------------------------------------------------------
# ``torch.ops.mosaic_bert.varlen_alibi_attn_fwd_v1(qkv, cu_seqlens, max_seqlen,
# slopes, scale) -> (out, lse)`` and ``..._bwd_v1(dout, qkv, out, lse,
# cu_seqlens, max_seqlen, slopes, scale) -> dqkv``: opaque to torch.compile and
# torch.export (they call it, they never trace into it), with fake
# implementations for shapes and a registered backward.  Implementation by
# input: the Triton kernels for fp16/bf16 on CUDA (or under the interpreter);
# otherwise the same math in plain PyTorch, fp32 (CPU, fp32 inputs), so CPU
# compile/export runs go through the very same op.
#   qkv (total, 3, H, D); cu_seqlens (n_seqs + 1,) int32; max_seqlen an upper
#   bound on the sequence lengths; slopes (H,) fp32; out (total, H, D);
#   lse (H, total) fp32 log2-sum-exp of the scaled, biased scores.
_OP_NAMESPACE = "mosaic_bert"
_FWD_OP = "varlen_alibi_attn_fwd_v1"  # bump the suffix when the schema changes
_BWD_OP = "varlen_alibi_attn_bwd_v1"


def _use_kernels(qkv):
    return (HAS_TRITON and qkv.dtype in (torch.float16, torch.bfloat16)
            and (qkv.is_cuda or _interpreting()))


def _acc_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _reference_grid(qkv, cu_seqlens, max_seqlen):
    """q, k, v padded per sequence: (n_seqs, H, L, D) each in fp32 (fp64 for
    fp64 inputs), plus the layout."""
    total, _, h, d = qkv.shape
    n, L = cu_seqlens.shape[0] - 1, max_seqlen
    pad_index, key_valid = varlen_padded_layout(cu_seqlens, total, L)
    grid = qkv.new_zeros((n * L, 3, h, d), dtype=_acc_dtype(qkv))
    grid = grid.index_copy(0, pad_index, qkv.to(grid.dtype))
    q, k, v = grid.view(n, L, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v, pad_index, key_valid


def _reference_scores(q, k, slopes, key_valid, scale):
    """(n, H, L, L) fp32: scale * q k^T - slope * |i - j|, -inf at padding keys."""
    L = q.shape[2]
    pos = torch.arange(L, device=q.device)
    dist = (pos[None, :] - pos[:, None]).abs().to(q.dtype)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale - slopes.to(q.dtype)[:, None, None] * dist
    return s.masked_fill(~key_valid[:, None, None, :], float("-inf"))


def _to_grid(x, pad_index, n, L, dtype):
    """(total, H, ...) -> (n, H, L, ...) in ``dtype`` with zeros at padding."""
    grid = x.new_zeros((n * L, *x.shape[1:]), dtype=dtype)
    grid = grid.index_copy(0, pad_index, x.to(dtype)).view(n, L, *x.shape[1:])
    return grid.transpose(1, 2)


def _from_grid(x, pad_index):
    """(n, H, L, ...) -> (total, H, ...) at the real tokens."""
    n, h, L = x.shape[:3]
    return x.transpose(1, 2).reshape(n * L, h, *x.shape[3:]).index_select(0, pad_index)


def reference_attn_fwd(qkv, cu_seqlens, max_seqlen, slopes, scale):
    """Plain-PyTorch forward of the op (fp32 math): ``(out, lse)``."""
    q, k, v, pad_index, key_valid = _reference_grid(qkv, cu_seqlens, max_seqlen)
    s = _reference_scores(q, k, slopes, key_valid, scale)
    lse = torch.logsumexp(s, dim=-1)  # (n, H, L)
    out = torch.matmul(torch.exp(s - lse[..., None]), v)
    out = _from_grid(out, pad_index).to(qkv.dtype)
    lse2 = _from_grid(lse[..., None] * _LOG2E, pad_index)[..., 0].t().float().contiguous()
    return out, lse2


def reference_attn_bwd(dout, qkv, out, lse, cu_seqlens, max_seqlen, slopes, scale):
    """Plain-PyTorch backward of the op (fp32 math, recomputes the scores): ``dqkv``."""
    q, k, v, pad_index, key_valid = _reference_grid(qkv, cu_seqlens, max_seqlen)
    n, L = q.shape[0], q.shape[2]
    do = _to_grid(dout, pad_index, n, L, q.dtype)
    o = _to_grid(out, pad_index, n, L, q.dtype)
    lse_e = _to_grid(lse.t()[..., None] / _LOG2E, pad_index, n, L, q.dtype)  # (n, H, L, 1)
    p = torch.exp(_reference_scores(q, k, slopes, key_valid, scale) - lse_e)
    dv = torch.matmul(p.transpose(-1, -2), do)
    dp = torch.matmul(do, v.transpose(-1, -2))
    ds = p * (dp - (do * o).sum(-1, keepdim=True))
    dq = torch.matmul(ds, k) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q) * scale
    dqkv = torch.stack((dq, dk, dv), dim=2)  # (n, H, 3, L, D)
    dqkv = _from_grid(dqkv.transpose(2, 3), pad_index)  # (total, H, 3, D)
    return dqkv.transpose(1, 2).contiguous().to(qkv.dtype)


def _attn_fwd_impl(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                   slopes: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    if not _use_kernels(qkv):
        return reference_attn_fwd(qkv, cu_seqlens, max_seqlen, slopes, scale)
    qkv = _last_dim_contig(qkv)
    return _fwd(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens, max_seqlen,
                max_seqlen, scale, False, slopes, 0)


def _attn_bwd_impl(dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                   slopes: torch.Tensor, scale: float) -> torch.Tensor:
    if not _use_kernels(qkv):
        return reference_attn_bwd(dout, qkv, out, lse, cu_seqlens, max_seqlen, slopes, scale)
    qkv = _last_dim_contig(qkv)
    dqkv = _empty(qkv.shape, qkv)
    _bwd(dout, qkv[:, 0], qkv[:, 1], qkv[:, 2], out, lse, cu_seqlens, cu_seqlens,
         max_seqlen, max_seqlen, scale, False, slopes, 0,
         dqkv[:, 0], dqkv[:, 1], dqkv[:, 2])
    return dqkv


def _attn_fwd_fake(qkv, cu_seqlens, max_seqlen, slopes, scale):
    total, _, h, d = qkv.shape
    return qkv.new_empty((total, h, d)), qkv.new_empty((h, total), dtype=torch.float32)


def _attn_bwd_fake(dout, qkv, out, lse, cu_seqlens, max_seqlen, slopes, scale):
    return qkv.new_empty(qkv.shape)


def _attn_setup_context(ctx, inputs, output):
    qkv, cu_seqlens, max_seqlen, slopes, scale = inputs
    out, lse = output
    ctx.save_for_backward(qkv, cu_seqlens, slopes, out, lse)
    ctx.max_seqlen, ctx.scale = max_seqlen, scale


def _attn_backward(ctx, dout, dlse):
    qkv, cu_seqlens, slopes, out, lse = ctx.saved_tensors
    bwd = getattr(getattr(torch.ops, _OP_NAMESPACE), _BWD_OP)
    dqkv = bwd(dout, qkv, out, lse, cu_seqlens, ctx.max_seqlen, slopes, ctx.scale)
    return dqkv, None, None, None, None


def _op_registered(name):
    try:
        getattr(getattr(torch.ops, _OP_NAMESPACE), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _register_ops():
    """Once per process: this file may be imported several times (as remote
    code under another module name); the first import registers the ops and
    later ones reuse them."""
    if _op_registered(_FWD_OP):
        return
    lib = torch.library
    bwd = lib.custom_op(f"{_OP_NAMESPACE}::{_BWD_OP}", _attn_bwd_impl, mutates_args=())
    bwd.register_fake(_attn_bwd_fake)
    fwd = lib.custom_op(f"{_OP_NAMESPACE}::{_FWD_OP}", _attn_fwd_impl, mutates_args=())
    fwd.register_fake(_attn_fwd_fake)
    fwd.register_autograd(_attn_backward, setup_context=_attn_setup_context)


_register_ops()


# ----------------------------------------------------------------------
# Dropout draws from a counter-based hash
# ----------------------------------------------------------------------
# A draw is 16 bits of a 32-bit hash of (key, counter): two rounds of the
# MurmurHash3 finaliser with the 62-bit key (two 31-bit halves of the seed)
# mixed in before each; one hash serves two elements (its low and high
# halves).  An element is kept when its draw >= round(p * 65536), so the keep
# rate is 1 - p to within 2**-17; kept elements are scaled by 1 / (1 - p).
# The same int32 expressions run as PyTorch ops (eager, or fused by Inductor
# into the neighbouring kernel) and in the Triton kernels: products wrap and
# right shifts are masked to act as logical shifts, so one seed gives the same
# mask on every path.  Why: Philox costs ten rounds of 32x32 -> 64-bit
# products per call, and Inductor spends one call per element: the LayerNorm
# kernel with the attention-output dropout ran at twice the time of the one
# without (0.114 vs 0.052 ms a layer at 24.6k tokens, H100).
_MIX_M1 = -2048144789  # 0x85EBCA6B as int32
_MIX_M2 = -1028477387  # 0xC2B2AE35 as int32
_LOW16 = 0xFFFF


def dropout_threshold(p: float) -> int:
    """Draws (16-bit, uniform in [0, 65536)) below this are dropped."""
    return int(round(float(p) * 65536))


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ ((x >> 16) & _LOW16)
    x = x * _MIX_M1
    x = x ^ ((x >> 13) & 0x7FFFF)
    x = x * _MIX_M2
    return x ^ ((x >> 16) & _LOW16)


def _seed_keys(seed: torch.Tensor):
    """Two int32 keys from a (1,) int64 seed in [0, 2**62)."""
    return (seed & 0x7FFFFFFF).to(torch.int32), ((seed >> 31) & 0x7FFFFFFF).to(torch.int32)


def dropout_draws(seed: torch.Tensor, counter: torch.Tensor, half) -> torch.Tensor:
    """16-bit draws (int32 in [0, 65536)) for the elements numbered ``counter`` (int64 >= 0), taking the low
    (``half`` = 0) or high (1) half of the counter's hash; ``seed`` (1,) int64 in [0, 2**62)."""
    k1, k2 = _seed_keys(seed)
    x = _mix32((counter & 0x7FFFFFFF).to(torch.int32) ^ k1)
    x = _mix32(x ^ k2 ^ (counter >> 31).to(torch.int32))
    return (x >> (half * 16)) & _LOW16


def hash_dropout(x: torch.Tensor, p: float, seed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dropout with draws from the counter hash (element k of ``x`` in row-major order takes half k % 2 of counter
    k // 2). Plain PyTorch ops: under torch.compile Inductor fuses them into the neighbouring kernel; eager it costs
    several passes over ``x`` (use ``F.dropout`` there). A pure function of ``seed`` (drawn when None)."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if p == 0.0:
        return x
    if seed is None:
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64, device=x.device)
    k = torch.arange(x.numel(), device=x.device).view(x.shape)
    keep = dropout_draws(seed, k >> 1, k & 1) >= dropout_threshold(p)
    return torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)


if HAS_TRITON:

    @triton.jit
    def _mix32_tl(x):
        x = x ^ ((x >> 16) & 0xFFFF)
        x = x * -2048144789
        x = x ^ ((x >> 13) & 0x7FFFF)
        x = x * -1028477387
        return x ^ ((x >> 16) & 0xFFFF)

    @triton.jit
    def _hash_tl(SEED, counter):
        """The counter hash for int32 counters in [0, 2**31); both halves are draws."""
        seed = tl.load(SEED)
        k1 = (seed & 0x7FFFFFFF).to(tl.int32)
        k2 = ((seed >> 31) & 0x7FFFFFFF).to(tl.int32)
        return _mix32_tl(_mix32_tl(counter ^ k1) ^ k2)


# ----------------------------------------------------------------------
# GeGLU with dropout as a custom op: dropout(GELU(gate) * up), exact GELU
# ----------------------------------------------------------------------
# ``torch.ops.mosaic_bert.geglu_dropout_fwd_v2(gate_up, seed, p) -> (h, mask)``
# and ``..._bwd_v2(dh, gate_up, mask, p) -> dgate_up``.  gate_up (N, 2I) is the
# output of the fused (hidden -> 2 x intermediate) matmul, gate = [:, :I],
# up = [:, I:]; h (N, I); mask uint8: (N, I) 0/1 on the PyTorch path, packed
# on the kernel path (one byte per position of a quarter, bit k = quarter k
# of a 1024-column block), (0,) when p == 0;
# seed (1,) int64, the only source of randomness (the op is a pure function of
# its inputs, so compilers may move it but never need to recompute it).
# Why a kernel: Inductor's fused version draws one Philox call per element and
# its backward writes the two halves of dgate_up as a `cat`, loading every input
# twice; here the draws come from the counter hash above (one hash per two
# elements) and the backward reads each input once.  Same math: GELU and the
# gate product in fp32, keep an element when its draw is >= the threshold,
# scale kept ones by 1 / (1 - p).  v2: hash draws (v1 drew from Philox).
_GEGLU_FWD_OP = "geglu_dropout_fwd_v2"
_GEGLU_BWD_OP = "geglu_dropout_bwd_v2"
_GEGLU_BLOCK_C = 1024  # a tile's columns: 4 quarters of 256 (fixes the mask's layout)
# (rows of a tile, warps) of each kernel: any choice gives the same results; these were the fastest at 24576 x 3072
# on an H100 (forward 0.186 ms against 0.196 at (4, 4); backward 0.273 for most choices)
_GEGLU_FWD_TILE, _GEGLU_BWD_TILE = (1, 2), (4, 4)

if HAS_TRITON:

    @triton.jit
    def _gelu_f32(x):
        return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))

    @triton.jit
    def _geglu_fwd_part(GU, H, rows, cols, r, n_rows, n_cols, threshold, scale,
                        HAS_DROPOUT: tl.constexpr):
        ok = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
        src = rows[:, None].to(tl.int64) * (2 * n_cols) + cols[None, :]
        g = tl.load(GU + src, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(GU + src + n_cols, mask=ok, other=0.0).to(tl.float32)
        h = _gelu_f32(g) * u
        keep = h == h  # all True when there is no dropout
        if HAS_DROPOUT:
            keep = r >= threshold
            h = tl.where(keep, h * scale, 0.0)
        dst = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
        tl.store(H + dst, h.to(H.dtype.element_ty), mask=ok)
        return keep.to(tl.uint8)

    @triton.jit
    def _geglu_tile(n_col_blocks, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        """This program's tile: BLOCK_R rows x 4 quarters of BLOCK_C // 4 columns. Returns the rows, the columns of
        the first quarter and `offs`, the position of each (row, column of a quarter) in the packed mask."""
        pid_r = tl.program_id(0)
        pid_c = tl.program_id(1)
        Q: tl.constexpr = BLOCK_C // 4
        rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        c0 = pid_c * BLOCK_C + tl.arange(0, Q)
        offs = (rows[:, None] * n_col_blocks + pid_c) * Q + tl.arange(0, Q)[None, :]
        return rows, c0, offs

    @triton.jit
    def _geglu_fwd_quarters(GU, H, MASK, rows, c0, offs, r0, r1, r2, r3, n_rows, n_cols, threshold, scale,
                            HAS_DROPOUT: tl.constexpr, Q: tl.constexpr):
        """The four quarters of a tile with draws r0..r3; their keep bits are one byte of the mask."""
        k0 = _geglu_fwd_part(GU, H, rows, c0, r0, n_rows, n_cols, threshold, scale, HAS_DROPOUT)
        k1 = _geglu_fwd_part(GU, H, rows, c0 + Q, r1, n_rows, n_cols, threshold, scale, HAS_DROPOUT)
        k2 = _geglu_fwd_part(GU, H, rows, c0 + 2 * Q, r2, n_rows, n_cols, threshold, scale, HAS_DROPOUT)
        k3 = _geglu_fwd_part(GU, H, rows, c0 + 3 * Q, r3, n_rows, n_cols, threshold, scale, HAS_DROPOUT)
        if HAS_DROPOUT:
            bits = k0 | (k1 << 1) | (k2 << 2) | (k3 << 3)
            tl.store(MASK + offs, bits, mask=rows[:, None] < n_rows)

    @triton.jit
    def _geglu_fwd_kernel(GU, H, MASK, SEED, n_rows, n_cols, n_col_blocks, threshold, scale,
                          HAS_DROPOUT: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_C: tl.constexpr):
        # Position `offs` of a quarter has two hash counters: 2 offs for quarters
        # 0-1 (low, high half) and 2 offs + 1 for quarters 2-3.
        rows, c0, offs = _geglu_tile(n_col_blocks, BLOCK_R, BLOCK_C)
        if HAS_DROPOUT:
            h01 = _hash_tl(SEED, offs * 2)
            h23 = _hash_tl(SEED, offs * 2 + 1)
            r0 = h01 & 0xFFFF
            r1 = (h01 >> 16) & 0xFFFF
            r2 = h23 & 0xFFFF
            r3 = (h23 >> 16) & 0xFFFF
        else:
            r0 = 0
            r1 = 0
            r2 = 0
            r3 = 0
        _geglu_fwd_quarters(GU, H, MASK, rows, c0, offs, r0, r1, r2, r3, n_rows, n_cols, threshold, scale,
                            HAS_DROPOUT, BLOCK_C // 4)

    @triton.jit
    def _geglu_bwd_part(DH, GU, DGU, rows, cols, bits, n_rows, n_cols, scale,
                        HAS_DROPOUT: tl.constexpr):
        ok = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
        src = rows[:, None].to(tl.int64) * (2 * n_cols) + cols[None, :]
        hid = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
        g = tl.load(GU + src, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(GU + src + n_cols, mask=ok, other=0.0).to(tl.float32)
        dh = tl.load(DH + hid, mask=ok, other=0.0).to(tl.float32)
        if HAS_DROPOUT:
            dh = tl.where((bits & 1) != 0, dh * scale, 0.0)
        cdf = 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
        pdf = tl.exp(-0.5 * g * g) * 0.3989422804014327
        dg = dh * u * (cdf + g * pdf)
        du = dh * (g * cdf)
        tl.store(DGU + src, dg.to(DGU.dtype.element_ty), mask=ok)
        tl.store(DGU + src + n_cols, du.to(DGU.dtype.element_ty), mask=ok)

    @triton.jit
    def _geglu_bwd_kernel(DH, GU, MASK, DGU, n_rows, n_cols, n_col_blocks, scale,
                          HAS_DROPOUT: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_C: tl.constexpr):
        Q: tl.constexpr = BLOCK_C // 4
        rows, c0, offs = _geglu_tile(n_col_blocks, BLOCK_R, BLOCK_C)
        if HAS_DROPOUT:
            bits = tl.load(MASK + offs, mask=rows[:, None] < n_rows, other=0).to(tl.int32)
        else:
            bits = 0
        _geglu_bwd_part(DH, GU, DGU, rows, c0, bits, n_rows, n_cols, scale, HAS_DROPOUT)
        _geglu_bwd_part(DH, GU, DGU, rows, c0 + Q, bits >> 1, n_rows, n_cols, scale, HAS_DROPOUT)
        _geglu_bwd_part(DH, GU, DGU, rows, c0 + 2 * Q, bits >> 2, n_rows, n_cols, scale, HAS_DROPOUT)
        _geglu_bwd_part(DH, GU, DGU, rows, c0 + 3 * Q, bits >> 3, n_rows, n_cols, scale, HAS_DROPOUT)


def _geglu_kernels(gate_up):
    return (HAS_TRITON and gate_up.dtype in (torch.float16, torch.bfloat16)
            and (gate_up.is_cuda or _interpreting()) and gate_up.dim() == 2
            and gate_up.stride(-1) == 1 and gate_up.shape[1] % 2 == 0)


def _geglu_check(gate_up, p):
    if gate_up.dim() != 2 or gate_up.shape[1] % 2:
        raise ValueError(f"gate_up must be (tokens, 2 * intermediate), got {tuple(gate_up.shape)}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")


def _geglu_columns(i: int, device):
    """Each of the ``i`` columns' place in a row of the kernels' packed mask (its byte) and its quarter (its bit)."""
    q = _GEGLU_BLOCK_C // 4
    cols = torch.arange(i, device=device)
    return (cols // _GEGLU_BLOCK_C) * q + (cols % _GEGLU_BLOCK_C) % q, (cols % _GEGLU_BLOCK_C) // q


def geglu_keep_reference(seed: torch.Tensor, n: int, i: int, p: float) -> torch.Tensor:
    """The op's keep decisions (n, i) bool, in PyTorch: the kernels' counter numbering (see the forward kernel)."""
    byte, quarter = _geglu_columns(i, seed.device)
    row_bytes = -(-i // _GEGLU_BLOCK_C) * (_GEGLU_BLOCK_C // 4)
    offs = torch.arange(n, device=seed.device)[:, None] * row_bytes + byte
    return dropout_draws(seed, offs * 2 + quarter // 2, quarter % 2) >= dropout_threshold(p)


def reference_geglu_fwd(gate_up, seed, p):
    """Plain-PyTorch forward of the op (fp32 math; the same keep decisions as the kernels)."""
    n, i2 = gate_up.shape
    gate, up = gate_up.float().split(i2 // 2, dim=-1)
    h = torch.nn.functional.gelu(gate) * up
    if p == 0.0:
        return h.to(gate_up.dtype), gate_up.new_empty((0,), dtype=torch.uint8)
    keep = geglu_keep_reference(seed.to(gate_up.device), n, i2 // 2, p)
    return (torch.where(keep, h / (1.0 - p), 0.0)).to(gate_up.dtype), keep.to(torch.uint8)


def reference_geglu_bwd(dh, gate_up, mask, p):
    """Plain-PyTorch backward of the op (fp32 math)."""
    n, i2 = gate_up.shape
    gate, up = gate_up.float().split(i2 // 2, dim=-1)
    d = dh.float()
    if p > 0.0:
        d = torch.where(mask.bool(), d / (1.0 - p), 0.0)
    cdf = 0.5 * (1.0 + torch.erf(gate * 0.7071067811865476))
    pdf = torch.exp(-0.5 * gate * gate) * 0.3989422804014327
    return torch.cat([d * up * (cdf + gate * pdf), d * gate * cdf], dim=-1).to(gate_up.dtype)


def _geglu_mask_shape(n, i, p):
    """The kernels' packed mask: one byte per position of a quarter, bit k = the keep decision of quarter k."""
    if p == 0.0:
        return (0,)
    return (n, triton.cdiv(i, _GEGLU_BLOCK_C) * (_GEGLU_BLOCK_C // 4))


def geglu_keep_mask(mask: torch.Tensor, n: int, i: int) -> torch.Tensor:
    """The op's dropout mask as (N, I) bool (True = kept), from either layout (0/1 or the kernels' packed bits)."""
    if tuple(mask.shape) == (n, i):
        return mask.bool()
    byte, bit = _geglu_columns(i, mask.device)
    return ((mask[:, byte].to(torch.int32) >> bit) & 1).bool()


def _geglu_fwd_impl(gate_up: torch.Tensor, seed: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    _geglu_check(gate_up, p)
    if not _geglu_kernels(gate_up):
        return reference_geglu_fwd(gate_up, seed, p)
    n, i2 = gate_up.shape
    i = i2 // 2
    h = _empty((n, i), gate_up)
    dropout = p > 0.0
    mask = torch.empty(_geglu_mask_shape(n, i, p), dtype=torch.uint8, device=gate_up.device)
    if n and i:
        n_cb = triton.cdiv(i, _GEGLU_BLOCK_C)
        rows, warps = _GEGLU_FWD_TILE
        _geglu_fwd_kernel[(triton.cdiv(n, rows), n_cb)](
            gate_up, h, mask, seed if dropout else gate_up, n, i, n_cb, dropout_threshold(p), 1.0 / (1.0 - p),
            HAS_DROPOUT=dropout, BLOCK_R=rows, BLOCK_C=_GEGLU_BLOCK_C, num_warps=warps)
    return h, mask


def _geglu_bwd_impl(dh: torch.Tensor, gate_up: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    if not _geglu_kernels(gate_up):
        return reference_geglu_bwd(dh, gate_up, mask, p)
    n, i2 = gate_up.shape
    i = i2 // 2
    dh = dh.contiguous()
    dgu = _empty((n, i2), gate_up)
    if n and i:
        n_cb = triton.cdiv(i, _GEGLU_BLOCK_C)
        rows, warps = _GEGLU_BWD_TILE
        _geglu_bwd_kernel[(triton.cdiv(n, rows), n_cb)](
            dh, gate_up, mask, dgu, n, i, n_cb, 1.0 / (1.0 - p), HAS_DROPOUT=p > 0.0, BLOCK_R=rows,
            BLOCK_C=_GEGLU_BLOCK_C, num_warps=warps)
    return dgu


def _geglu_fwd_fake(gate_up, seed, p):
    n, i2 = gate_up.shape
    if p == 0.0:
        mask_shape = (0,)
    elif _geglu_kernels(gate_up):
        mask_shape = _geglu_mask_shape(n, i2 // 2, p)
    else:
        mask_shape = (n, i2 // 2)
    return gate_up.new_empty((n, i2 // 2)), gate_up.new_empty(mask_shape, dtype=torch.uint8)


def _geglu_bwd_fake(dh, gate_up, mask, p):
    return gate_up.new_empty(gate_up.shape)


def _geglu_setup_context(ctx, inputs, output):
    gate_up, _, p = inputs
    ctx.save_for_backward(gate_up, output[1])
    ctx.p = p


def _geglu_backward(ctx, dh, dmask):
    gate_up, mask = ctx.saved_tensors
    bwd = getattr(getattr(torch.ops, _OP_NAMESPACE), _GEGLU_BWD_OP)
    return bwd(dh, gate_up, mask, ctx.p), None, None


def _register_geglu_ops():
    if _op_registered(_GEGLU_FWD_OP):
        return
    lib = torch.library
    bwd = lib.custom_op(f"{_OP_NAMESPACE}::{_GEGLU_BWD_OP}", _geglu_bwd_impl, mutates_args=())
    bwd.register_fake(_geglu_bwd_fake)
    fwd = lib.custom_op(f"{_OP_NAMESPACE}::{_GEGLU_FWD_OP}", _geglu_fwd_impl, mutates_args=())
    fwd.register_fake(_geglu_fwd_fake)
    fwd.register_autograd(_geglu_backward, setup_context=_geglu_setup_context)


_register_geglu_ops()


def geglu_dropout(gate_up: torch.Tensor, p: float) -> torch.Tensor:
    """dropout(GELU(gate_up[:, :I]) * gate_up[:, I:], p) through the custom op (eager, torch.compile, export):
    the Triton kernels for fp16/bf16 on CUDA, the same math in PyTorch otherwise. ``p`` = 0 draws nothing."""
    p = float(p)
    if p > 0.0:
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64, device=gate_up.device)
    else:
        seed = torch.zeros((1,), dtype=torch.int64, device=gate_up.device)
    fwd = getattr(getattr(torch.ops, _OP_NAMESPACE), _GEGLU_FWD_OP)
    return fwd(gate_up, seed, p)[0]


def varlen_attention(qkv, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale=None):
    """Packed varlen self-attention with ALiBi through the custom op (works in
    eager, under torch.compile(fullgraph=True) and torch.export).

    qkv (total, 3, H, D); cu_seqlens (n_seqs + 1,) int; max_seqlen an int
    bound on the lengths (zero-length sequences allowed); alibi_slopes (H,)
    fp32.  Returns (total, H, D).  The Triton kernels run for fp16/bf16 on
    CUDA; other inputs run the same math in PyTorch.  No attention dropout."""
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(qkv.shape[-1])
    fwd = getattr(getattr(torch.ops, _OP_NAMESPACE), _FWD_OP)
    slopes = alibi_slopes.to(device=qkv.device, dtype=torch.float32)
    out, _ = fwd(qkv, cu_seqlens.to(torch.int32), max_seqlen, slopes, scale)
    return out
