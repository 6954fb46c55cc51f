#!/usr/bin/env python
"""Benchmarks for mosaic-bert.  Modes are registered in ``MODES``; add new ones
with the ``@mode("name")`` decorator.

    python benchmarks/benchmark.py compare --out DIR          # the default mode (GPU; see benchmarks/compare_gpu.sh)
    python benchmarks/benchmark.py compare --smoke --out DIR  # the same matrix on CPU, tiny configs, one step
    python benchmarks/benchmark.py attention --out DIR

compare: one process, one table. Models: transformers' BertForMaskedLM with SDPA attention (eager and under
torch.compile), ModernBERT-base with SDPA, and MosaicBERT-base (eager and under torch.compile; a model that fails to
build, compile or run becomes an error row, the run goes on). Cases (``CASES``): training steps at 256x128 and
512x128 with 25 % and 0 % padding, 64x512 and 32x1024 with 25 %; inference forwards at L 128/512/1024 with 25 %
padding (~64k tokens per batch). Per row: real tokens/s, median step ms, MFU, peak memory, and for ours the ratio
to the best peer. Writes compare_<tag>.{json,md,png} (environment included) to --out. ``--only`` picks cases and
models by pattern, ``--budget-s`` bounds the whole run (rows past it are recorded as skipped).

attention: forward+backward time (median of triton.testing.do_bench) and peak
extra memory of one attention layer on a varlen batch of ~16k real tokens at
~60% fill, 12 heads, head dim 64, bf16, for our Triton kernel and baselines:
  triton, sdpa,   every entry of the model's own attention table
  eager, ...      (modeling_bert.ATTENTION_FUNCTIONS), called as the model calls
                  it: packed qkv in, packed out (the PyTorch paths pad, build the
                  ALiBi/padding bias and unpad inside, as in the model)
  flex            FlexAttention (compiled) on packed tokens, ALiBi score_mod +
                  document mask (block-mask build time reported separately)
  varlen_floor    torch.nn.attention.varlen.varlen_attn (flash-attn 2 in torch,
                  NO ALiBi) on the unpadded tokens: the floor
"""

import argparse
import fnmatch
import gc
import importlib.util
import inspect
import json
import math
import os
import statistics
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mosaic_bert.modeling.modeling_bert import alibi_slopes_list

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {}


def mode(name):
    def deco(fn):
        MODES[name] = fn
        return fn
    return deco


def make_batch(L, tokens, fill, seed):
    g = torch.Generator().manual_seed(seed)
    B = max(1, round(tokens / (fill * L)))
    lo = max(1, int(round((2 * fill - 1) * L)))  # uniform in [lo, L]: mean ~ fill*L
    lens = torch.randint(lo, L + 1, (B,), generator=g)
    return lens.tolist()


# ----------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------
REFERENCE = "triton"  # the attention method the others are compared with (the model's default on CUDA)


def _model_methods(qkv, cu, Lmax, slopes, dout) -> dict:
    """One method per entry of the model's own attention table (``modeling_bert.ATTENTION_FUNCTIONS``), called as
    the model calls it: packed qkv, a fresh ``Sequences`` per forward (the PyTorch paths pad inside)."""
    from mosaic_bert.modeling import modeling_bert
    from mosaic_bert.modeling.modeling_bert import ATTENTION_FUNCTIONS, Sequences

    methods = {}
    for name, fn in ATTENTION_FUNCTIONS.items():
        if name == "flash_attn" and getattr(modeling_bert, "fa2_varlen_qkvpacked", None) is None:
            methods[name] = dict(error="the flash-attn package is not installed")
            continue
        leaf = qkv.clone().requires_grad_(True)

        def fwd(fn=fn, leaf=leaf):
            return fn(leaf, Sequences(cu, Lmax), slopes, 0.0)

        methods[name] = dict(fwd=fwd, leaves=[leaf], dout=dout, packed=True)
    return methods


def _flex_method(qkv, lens_t, slopes, dout, scale) -> dict:
    """FlexAttention (compiled) on the packed tokens: ALiBi as score_mod, a document mask (not in the model)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev, (T, _, H, D), B = qkv.device, qkv.shape, lens_t.numel()
    Tp = ((T + 127) // 128) * 128
    doc = torch.full((Tp,), -1, dtype=torch.int32, device=dev)
    doc[:T] = torch.repeat_interleave(torch.arange(B, device=dev, dtype=torch.int32), lens_t)

    def mask_mod(b, h, qi, ki):
        return doc[qi] == doc[ki]

    def score_mod(score, b, h, qi, ki):
        return score - slopes[h] * (qi - ki).abs()

    def build():
        return create_block_mask(mask_mod, None, None, Tp, Tp, device=dev)

    def padT(x):  # (T, H, D) -> (1, H, Tp, D)
        out = x.new_zeros(Tp, H, D)
        out[:T] = x
        return out.transpose(0, 1).unsqueeze(0).contiguous()

    flex_c = torch.compile(flex_attention, dynamic=False)
    qf, kf, vf = (padT(qkv[:, i]).requires_grad_(True) for i in range(3))
    holder = {}

    def fwd():
        if "bm" not in holder:
            holder["bm"] = build()
        return flex_c(qf, kf, vf, score_mod=score_mod, block_mask=holder["bm"], scale=scale)

    return dict(fwd=fwd, leaves=[qf, kf, vf], dout=padT(dout), packed="flex", build=build, T=T)


def _floor_method(qkv, cu, Lmax, dout, scale) -> dict:
    """torch.nn.attention.varlen.varlen_attn (flash-attn 2 inside torch) WITHOUT ALiBi: the floor."""
    from torch.nn.attention.varlen import varlen_attn

    qv, kv, vv = (qkv[:, i].contiguous().requires_grad_(True) for i in range(3))

    def fwd():
        return varlen_attn(qv, kv, vv, cu, cu, Lmax, Lmax, scale=scale)

    return dict(fwd=fwd, leaves=[qv, kv, vv], dout=dout, packed=True, no_alibi=True)


def attention_methods(lens, L, H, D, dtype):
    """-> ({name: method}, to_packed): the model's attention table plus two baselines it does not ship."""
    dev = "cuda"
    B, T = len(lens), sum(lens)
    lens_t = torch.tensor(lens, device=dev)
    cu = torch.zeros(B + 1, dtype=torch.int32, device=dev)
    cu[1:] = lens_t.cumsum(0)
    g = torch.Generator(device=dev).manual_seed(0)
    qkv = torch.randn(T, 3, H, D, device=dev, dtype=dtype, generator=g)
    dout = torch.randn(T, H, D, device=dev, dtype=dtype, generator=g)
    slopes = torch.tensor(alibi_slopes_list(H), device=dev, dtype=torch.float32)
    scale = 1.0 / math.sqrt(D)
    methods = _model_methods(qkv, cu, max(lens), slopes, dout)
    for name, make in (("flex", lambda: _flex_method(qkv, lens_t, slopes, dout, scale)),
                       ("varlen_floor", lambda: _floor_method(qkv, cu, max(lens), dout, scale))):
        try:
            methods[name] = make()
        except Exception as e:  # noqa: BLE001 -- a baseline this torch lacks is a row, not a crash
            methods[name] = dict(error=f"{type(e).__name__}: {e}")

    def to_packed(o, kind):
        return o if kind is True else o[0].transpose(0, 1)[:T]

    return methods, to_packed


def _time_method(m, args, row) -> None:
    """Fill ``row`` with one method's first-call time, fwd and fwd+bwd medians (eager launch and CUDA graph) and its
    peak extra memory; returns the first forward's output (detached) for the accuracy check."""
    import triton.testing as tt

    fwd, leaves, dout = m["fwd"], m["leaves"], m["dout"]

    def step():
        fwd().backward(dout)

    def clear():
        for x in leaves:
            x.grad = None

    t0 = time.perf_counter()
    o = fwd()  # compile / autotune
    torch.cuda.synchronize()
    o.backward(dout)
    torch.cuda.synchronize()
    row["first_call_s"] = time.perf_counter() - t0
    clear()
    # forward alone, graph recorded as in training (no recompile for compiled methods)
    row["fwd_ms"] = tt.do_bench(fwd, warmup=25, rep=args.rep, return_mode="median")
    row["fwd_bwd_ms"] = tt.do_bench(step, warmup=25, rep=args.rep, grad_to_none=leaves, return_mode="median")
    clear()
    try:  # GPU time without host overhead: the step captured in a CUDA graph
        row["fwd_bwd_graph_ms"] = tt.do_bench_cudagraph(step, rep=args.rep, grad_to_none=leaves,
                                                        return_mode="median")
    except Exception as e:  # noqa: BLE001 -- a method that cannot be captured still has its eager numbers
        row["graph_error"] = f"{type(e).__name__}: {str(e)[:120]}"
        torch.cuda.synchronize()
    clear()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    row["peak_mem_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    clear()
    if "build" in m:
        row["block_mask_build_ms"] = tt.do_bench(m["build"], warmup=5, rep=50, return_mode="median")
    if m.get("no_alibi"):
        row["note"] = "no ALiBi (floor)"
    return o.detach()


def bench_attention_L(L, args):
    H, D, dtype = args.heads, args.headdim, torch.bfloat16
    lens = make_batch(L, args.tokens, args.fill, seed=L)
    B, T = len(lens), sum(lens)
    flops_fwd = 4.0 * sum(n * n for n in lens) * H * D  # QK^T and PV, non-causal
    flops_fb = 3.5 * flops_fwd  # backward = 2.5x forward (5 matmuls vs 2)
    methods, to_packed = attention_methods(lens, L, H, D, dtype)
    rows, ref_out = [], None
    for name, m in methods.items():
        row = dict(L=L, batch=B, tokens=T, method=name)
        if "error" in m:
            row["error"] = m["error"]
        else:
            try:
                out = to_packed(_time_method(m, args, row), m["packed"]).float()
                row["tflops_fwd_bwd"] = flops_fb / (row["fwd_bwd_ms"] * 1e-3) / 1e12
                if name == REFERENCE:
                    ref_out = out
                elif ref_out is not None:
                    row["rel_diff_vs_ref"] = ((out - ref_out).norm() / ref_out.norm()).item()
            except Exception as e:  # noqa: BLE001 -- e.g. flash_attn not installed: a row, not a crash
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                if args.verbose:
                    traceback.print_exc()
        rows.append(row)
        print(f"L={L} {name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in row.items() if k not in ("L", "method")), flush=True)
        torch.cuda.empty_cache()
    return rows


def summarize(rows, Ls):
    by = {(r["L"], r["method"]): r for r in rows}
    names = []
    for r in rows:
        if r["method"] not in names:
            names.append(r["method"])
    lines = ["| L | batch | method | fwd+bwd GPU ms (graph) | fwd+bwd ms (eager launch) | fwd ms (eager) | peak MB | TFLOP/s (graph) | vs triton (graph) | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def t(r):
        return r.get("fwd_bwd_graph_ms", r.get("fwd_bwd_ms"))

    goals = []
    for L in Ls:
        ours = by.get((L, REFERENCE), {})
        for n in names:
            r = by.get((L, n))
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {L} | {r['batch']} | {n} | n/a | n/a | n/a | n/a | | | {r['error'][:90]} |")
                continue
            rel = ""
            if "fwd_bwd_ms" in ours:
                rel = f"{t(r) / t(ours):.2f}x"
            note = r.get("note", "")
            if "graph_error" in r:
                note += f" graph capture failed ({r['graph_error'][:60]}), GPU column = eager"
            g_ms = r.get("fwd_bwd_graph_ms")
            g_txt = f"{g_ms:.3f}" if g_ms is not None else "n/a"
            tfl = r["tflops_fwd_bwd"] * r["fwd_bwd_ms"] / t(r)
            if "block_mask_build_ms" in r:
                note += f" block mask build {r['block_mask_build_ms']:.3f} ms"
            if "rel_diff_vs_ref" in r:
                note += f" rel diff vs {REFERENCE} {r['rel_diff_vs_ref']:.1e}"
            lines.append(
                f"| {L} | {r['batch']} | {n} | {g_txt} | {r['fwd_bwd_ms']:.3f} | {r['fwd_ms']:.3f} | "
                f"{r['peak_mem_mb']:.0f} | {tfl:.0f} | {rel} | {note.strip()} |")
        floor = by.get((L, "varlen_floor"), {})
        sdpa = [t(by[(L, n)]) for n in ("sdpa",)
                if "fwd_bwd_ms" in by.get((L, n), {})]
        if "fwd_bwd_ms" in ours:
            g = f"L={L} (GPU time, graph): ours {t(ours):.3f} ms"
            if "fwd_bwd_ms" in floor:
                ratio = t(ours) / t(floor)
                g += f"; ours/floor = {ratio:.2f}x (goal <= 1.10: {'met' if ratio <= 1.1 else 'NOT met'})"
            if sdpa:
                sp = min(sdpa) / t(ours)
                g += f"; best SDPA/ours = {sp:.2f}x (goal >= 1.20: {'met' if sp >= 1.2 else 'NOT met'})"
            goals.append(g)
    return "\n".join(lines), goals


def plot(rows, Ls, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = []
    for r in rows:
        if r["method"] not in names:
            names.append(r["method"])
    for n in names:
        xs = [r["L"] for r in rows if r["method"] == n and "fwd_bwd_ms" in r]
        ys = [r["fwd_bwd_ms"] for r in rows if r["method"] == n and "fwd_bwd_ms" in r]
        if xs:
            ax.plot(xs, ys, marker="o", label=n, linewidth=2.5 if n == REFERENCE else 1.2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(Ls)
    ax.set_xticklabels([str(x) for x in Ls])
    ax.set_xlabel("max sequence length L (~16k real tokens, ~60% fill)")
    ax.set_ylabel("forward+backward time, ms (median)")
    ax.set_title("Attention fwd+bwd, 12 heads x 64, bf16")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


@mode("attention")
def run_attention(args):
    if not torch.cuda.is_available():
        raise SystemExit("attention benchmark needs a CUDA GPU")
    import triton

    from mosaic_bert.modeling import flash_attn_triton as fa
    Ls = [int(x) for x in args.lengths.split(",")]
    env = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
               triton=triton.__version__, heads=args.heads, headdim=args.headdim,
               tokens=args.tokens, fill=args.fill)
    try:
        from torch.nn.attention.varlen import varlen_attn
        env["varlen_attn_signature"] = str(inspect.signature(varlen_attn))
    except Exception as e:  # noqa: BLE001
        env["varlen_attn_signature"] = f"unavailable: {e}"
    print(env, flush=True)
    importlib.import_module("torch._dynamo").config.cache_size_limit = 64
    rows = []
    for L in Ls:
        rows += bench_attention_L(L, args)
    configs = {}
    for kn in ("_fwd_kernel", "_bwd_kv_kernel", "_bwd_q_kernel"):
        k = getattr(fa, kn, None)
        configs[kn] = {str(key): str(cfg) for key, cfg in getattr(k, "cache", {}).items()}
    table, goals = summarize(rows, Ls)
    tag = args.tag
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"attention_bench_{tag}.json"), "w") as f:
        json.dump(dict(env=env, rows=rows, autotune=configs), f, indent=1)
    md = [f"# Attention benchmark ({env['device']})", "",
          f"torch {env['torch']}, triton {env['triton']}; {args.heads} heads x "
          f"{args.headdim}, bf16, ~{args.tokens} real tokens per batch at ~{args.fill:.0%} "
          "fill; median of triton.testing.do_bench; peak MB = peak allocated during "
          "one fwd+bwd above what was allocated before it. The model's PyTorch paths (sdpa, "
          "eager) pad, build the (n, H, L, L) ALiBi/padding bias and unpad inside every call, as in the model.",
          "", table, "", "Goals:", ""] + [f"- {g}" for g in goals] + [
          "", "Autotuned configs:", "", "```", json.dumps(configs, indent=1), "```"]
    with open(os.path.join(args.out, f"attention_bench_{tag}.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    plot(rows, Ls, os.path.join(args.out, f"attention_bench_{tag}.png"))
    print(table)
    print("\n".join(goals))


# ----------------------------------------------------------------------
# compare: ours against the peers, one process, same batches
# ----------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One benchmark shape: ``kind`` "train" (fwd + bwd + fused AdamW, bf16 autocast, 30 % masking, MLM loss) or
    "infer" (bf16 weights, no grad, the encoder's last_hidden_state); ``pad`` is the mean padding fraction."""
    kind: str
    batch: int
    seqlen: int
    pad: float

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.batch}x{self.seqlen}-pad{round(self.pad * 100)}"

    def smoke(self) -> "Case":
        """The same case at CPU-smoke size (a few rows of 16..64 tokens)."""
        return Case(self.kind, max(2, self.batch // 128), max(16, self.seqlen // 16), self.pad)


# headline cases first (with --budget-s the tail is what gets skipped); the same shape twice in a row lets a compiled
# model's second row hit Inductor's graph cache
CASES = (
    Case("train", 256, 128, 0.25), Case("train", 256, 128, 0.0), Case("infer", 512, 128, 0.25),
    Case("infer", 128, 512, 0.25), Case("infer", 64, 1024, 0.25), Case("train", 512, 128, 0.25),
    Case("train", 512, 128, 0.0), Case("train", 64, 512, 0.25), Case("train", 32, 1024, 0.25),
)
MASK_PROB = 0.3
BATCH_VOCAB = 30522  # token ids are drawn below every model's vocabulary (BERT's, ModernBERT's is larger)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1024)


@dataclass(frozen=True)
class ModelSpec:
    """A model in the comparison. ``ours``: counted against the best peer; ``real_flops``: MFU charges the work on
    real tokens only (ours unpads), else the padded work (peers run every position)."""
    name: str
    build: Callable  # (kind "train" | "infer", tiny: bool) -> nn.Module on the default device
    compiled: bool = False
    ours: bool = False
    real_flops: bool = False
    cpu_layout: bool = False  # also pass the unpadding computed on the CPU, where the model accepts it
    bucketed: bool = False  # the unpadding with bucketed sizes (filler tokens, fixed-capacity masked positions)
    compile_mode: str | None = None  # torch.compile mode for this row (None: --compile-mode)
    inductor: tuple = ()  # Inductor config for this row's compile, (name, value) pairs (e.g. coordinate descent)


def _takes_cpu_layout() -> bool:
    """Whether our model accepts a precomputed unpadding (``indices``, ``cu_seq_lens_q``, ``max_length_q``)."""
    from mosaic_bert import BertModel

    return {"indices", "cu_seq_lens_q", "max_length_q"} <= set(inspect.signature(BertModel.forward).parameters)


def cpu_layout(b: dict) -> dict:
    """``b`` plus the unpadding a data collator computes on the CPU, so that the model asks the GPU nothing: flat
    positions of the real tokens, cumulative sequence lengths (int32) and the longest length (a Python int)."""
    mask = b["attention_mask"]
    lens = mask.sum(1)
    cu = torch.zeros(lens.numel() + 1, dtype=torch.int32)
    cu[1:] = lens.cumsum(0)
    return dict(b, indices=mask.flatten().nonzero().flatten(), cu_seq_lens_q=cu, max_length_q=int(lens.max()))


def _hf_bert(kind, tiny):
    import transformers

    # BERT-base with a 1024-row position table, so the L 1024 cases run (the table is a lookup: no FLOPs change)
    cfg = transformers.BertConfig(attn_implementation="sdpa",
                                  **(TINY if tiny else dict(vocab_size=30528, max_position_embeddings=1024)))
    if kind == "train":
        return transformers.BertForMaskedLM(cfg)
    return transformers.BertModel(cfg, add_pooling_layer=False)


def _modernbert(kind, tiny):
    import transformers

    small = dict(TINY, intermediate_size=96, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                 sep_token_id=2, local_attention=16) if tiny else {}
    # ModernBERT-base by default; reference_compile=False: older transformers compiled parts of it on their own
    cfg = transformers.ModernBertConfig(attn_implementation="sdpa", reference_compile=False, **small)
    if kind == "train":
        return transformers.ModernBertForMaskedLM(cfg)
    return transformers.ModernBertModel(cfg)


def _ours(kind, tiny):
    from mosaic_bert import BertConfig, BertForMaskedLM, BertModel

    cfg = BertConfig(**(TINY if tiny else {}))
    if kind == "train":
        return BertForMaskedLM(cfg)
    return BertModel(cfg, add_pooling_layer=False)


MODELS = (
    ModelSpec("hf-bert-sdpa", _hf_bert),
    ModelSpec("hf-bert-sdpa-compiled", _hf_bert, compiled=True),
    ModelSpec("modernbert-base-sdpa", _modernbert),
    ModelSpec("ours", _ours, ours=True, real_flops=True),
    ModelSpec("ours-compiled", _ours, compiled=True, ours=True, real_flops=True, cpu_layout=True),
    ModelSpec("ours-compiled-bucketed", _ours, compiled=True, ours=True, real_flops=True, bucketed=True),
    ModelSpec("ours-compiled-bucketed-cg", _ours, compiled=True, ours=True, real_flops=True, bucketed=True,
              compile_mode="reduce-overhead"),
    # Inductor's coordinate-descent tuning of its own kernels' launch configurations (longer compiles), for both
    ModelSpec("hf-bert-sdpa-compiled-cdt", _hf_bert, compiled=True, inductor=(("coordinate_descent_tuning", True),)),
    ModelSpec("ours-compiled-bucketed-cg-cdt", _ours, compiled=True, ours=True, real_flops=True, bucketed=True,
              compile_mode="reduce-overhead", inductor=(("coordinate_descent_tuning", True),)),
)
TOKEN_MULTIPLE, LABEL_MULTIPLE = 128, 64  # bucket sizes of the bucketed rows (filler: ~0.3 % of the tokens)


def bucketed_inputs(b: dict) -> dict:
    """``b`` plus the bucketed unpadding a data collator computes on the CPU (``bert_padding.bucketed_layout``):
    the real-token count rounded up to TOKEN_MULTIPLE with filler tokens, the labelled positions at a capacity
    rounded up to LABEL_MULTIPLE, max_length_q = the padded length. No data-dependent size is left in the step."""
    from mosaic_bert.modeling.bert_padding import bucketed_layout

    lay = bucketed_layout(b["attention_mask"], b.get("labels"), token_multiple=TOKEN_MULTIPLE,
                          label_multiple=LABEL_MULTIPLE)
    return dict(b, **lay)


def mark_bucket_dims(batches: list[dict]) -> None:
    """One compiled graph for every bucket (the sizes stay symbolic), marked as the trainer marks them; CUDA graphs
    are recorded per bucket."""
    from mosaic_bert.train.model import MosaicBertFamily
    from mosaic_bert.train.runtime import mark_dynamic_inputs

    for b in batches:
        mark_dynamic_inputs(b, MosaicBertFamily.dynamic_inputs)


def case_batches(case: Case, n: int, vocab: int, seed: int) -> list[dict]:
    """``n`` CPU batches: lengths uniform on [(1 - 2 pad) L, L] (mean padding ``pad``), 30 % of the real tokens
    labelled for MLM (training cases). Same seed, same batches for every model."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lo = max(1, round((1 - 2 * case.pad) * case.seqlen))
        lens = torch.randint(lo, case.seqlen + 1, (case.batch,), generator=g)
        mask = (torch.arange(case.seqlen)[None] < lens[:, None]).long()
        ids = torch.randint(5, vocab, (case.batch, case.seqlen), generator=g) * mask
        b = dict(input_ids=ids, attention_mask=mask)
        if case.kind == "train":
            picked = (torch.rand(case.batch, case.seqlen, generator=g) < MASK_PROB) & mask.bool()
            b["labels"] = torch.where(picked, ids, -100)
        out.append(b)
    return out


def work_stats(case: Case, batches: list[dict], real: bool) -> tuple[float, float, float]:
    """Mean per batch of (tokens the weight matmuls run on, sum of attended length squared, MLM head positions)."""
    stats = []
    for b in batches:
        lens = b["attention_mask"].sum(1).double()
        if real:
            head = float((b["labels"] != -100).sum()) if "labels" in b else 0.0
            stats.append((float(lens.sum()), float((lens * lens).sum()), head))
        else:
            n = case.batch * case.seqlen
            stats.append((float(n), float(n * case.seqlen), float(n) if "labels" in b else 0.0))
    return tuple(sum(s[i] for s in stats) / len(stats) for i in range(3))


def model_flops(model, case: Case, batches: list[dict], real: bool) -> float:
    """FLOPs of one step (mean over the batches), from mosaic_bert.train.flops: training = fwd + bwd; inference =
    forward only (a third) and no MLM head."""
    from mosaic_bert.train.flops import model_flop_params, step_flops

    tokens, attn_sq, head = work_stats(case, batches, real)
    flops = step_flops(*model_flop_params(model), model.config.num_hidden_layers, tokens, attn_sq, head)
    return flops if case.kind == "train" else flops / 3.0


class _Timer:
    """Per-step wall time: CUDA events on the stream (include any host stall inside the step), else perf_counter."""

    def __init__(self, cuda: bool):
        self.cuda, self.marks = cuda, []

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            self.marks.append((start, end))
        else:
            t0 = time.perf_counter()
            fn()
            self.marks.append(time.perf_counter() - t0)

    def seconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [s.elapsed_time(e) / 1e3 for s, e in self.marks]
        return list(self.marks)


def make_step(model, case: Case, amp: bool, device: str, graphs: bool = False):
    """-> step(batch): one training step (autocast bf16 when ``amp``, MLM loss, fused AdamW) or one inference
    forward (no grad, encoder output). ``graphs``: the model runs under CUDA graphs (mode="reduce-overhead"); each
    step starts a new graph step (outputs of the previous replay are not kept)."""
    begin = torch.compiler.cudagraph_mark_step_begin if graphs else (lambda: None)
    if case.kind == "infer":
        model.eval()

        def infer(b):
            begin()
            with torch.no_grad():
                return model(**{k: v for k, v in b.items() if k not in ("labels", "masked_positions")}).last_hidden_state
        return infer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if device == "cuda" else {}))

    def train(b):
        begin()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return train


def _graph_breaks(clear: bool = False) -> int:
    from torch._dynamo.utils import counters

    n = int(sum(counters["graph_break"].values()))
    if clear:
        counters["graph_break"].clear()
    return n


def measure(spec: ModelSpec, case: Case, batches: list[dict], args) -> dict:
    """Build ``spec`` for ``case``, warm up (compiling, if so), time ``args.steps`` steps. Raises on failure."""
    cuda = args.device == "cuda"
    torch.manual_seed(0)
    with torch.device(args.device):
        model = spec.build(case.kind, args.smoke)
    if case.kind == "infer" and cuda:
        model = model.to(torch.bfloat16)  # bf16 weights, as served
    if cuda:  # the peak-memory window starts with the model resident (not the fp32 build of a bf16 model)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    row = dict(params=sum(p.numel() for p in model.parameters()),
               flops=model_flops(model, case, batches, spec.real_flops))
    mode = spec.compile_mode or args.compile_mode
    if spec.compiled:
        model = torch.compile(model, mode=mode, backend=args.compile_backend)
    with torch._inductor.config.patch(dict(spec.inductor)):   # compiles happen at the first calls, inside
        _time_steps(model, spec, case, batches, args, mode, row)
    if spec.compiled:
        row["graph_breaks"] = _graph_breaks()
    return row


def _time_steps(model, spec: ModelSpec, case: Case, batches: list[dict], args, mode, row: dict) -> None:
    """Warm up (compiling, if so) and time ``args.steps`` steps of ``model`` into ``row``."""
    cuda = args.device == "cuda"
    step = make_step(model, case, amp=cuda, device=args.device,
                     graphs=spec.compiled and cuda and mode is not None and "reduce-overhead" in mode)
    t0 = time.perf_counter()
    step(batches[0])  # the first call compiles (compiled rows)
    if cuda:
        torch.cuda.synchronize()
    row["first_step_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, max(args.warmup, len(batches))):  # every batch seen before timing (recompiles included)
        step(batches[i % len(batches)])
    if cuda:
        torch.cuda.synchronize()
    row["warmup_s"] = time.perf_counter() - t0
    timer = _Timer(cuda)
    for i in range(args.steps):
        timer(lambda b=batches[i % len(batches)]: step(b))
    secs = timer.seconds()
    real = sum(float(batches[i % len(batches)]["attention_mask"].sum()) for i in range(args.steps)) / args.steps
    med = statistics.median(secs)
    row.update(step_ms=med * 1e3, mean_step_ms=statistics.fmean(secs) * 1e3, real_tokens_per_step=real,
               tokens_per_s=real / med)


def _free(device: str) -> None:
    """Release the previous row's model, optimizer state and compiled graphs before the next peak-memory window.
    Every row, compiled or not: a compiled row's code cache and CUDA-graph pool outlive it until dynamo is reset (an
    eager row after compiled ones ran out of memory at 512x128 in run 1)."""
    gc.collect()
    torch._dynamo.reset()  # compiled code, guards and (on CUDA) the CUDA-graph trees and their memory pools
    if device == "cuda":
        gc.collect()  # reference cycles (compiled modules, autograd graphs) would otherwise hold GPU memory
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _to(b: dict, device: str) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}


def run_row(spec: ModelSpec, case: Case, batches: list[dict], args, peak) -> dict:
    """One (case, model) row; any failure is recorded in the row, never raised."""
    row = dict(case=case.name, kind=case.kind, batch=case.batch, seqlen=case.seqlen, pad=case.pad, model=spec.name,
               ours=spec.ours, compiled=spec.compiled, flops_counted="real tokens" if spec.real_flops else "padded",
               compile_mode=(spec.compile_mode or args.compile_mode) if spec.compiled else None)
    _free(args.device)  # also a fresh compile per row: no cache limits hit, no graphs kept from other shapes
    if spec.compiled:
        _graph_breaks(clear=True)
    try:
        row.update(measure(spec, case, batches, args))
        if peak:
            row["mfu"] = row["flops"] / (row["step_ms"] / 1e3) / peak
        if args.device == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except Exception as e:  # noqa: BLE001 -- a model that fails (e.g. does not compile) is a result, not a crash
        row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
        print(f"{case.name} {spec.name} failed; the traceback (the row records the error and the run goes on):",
              flush=True)
        traceback.print_exc()
    return row


def add_ratios(rows: list[dict]) -> None:
    """On each of our rows: ``vs_best_peer`` = its tokens/s over the best peer's in the same case (and which)."""
    for case in dict.fromkeys(r["case"] for r in rows):
        peers = [r for r in rows if r["case"] == case and not r["ours"] and "tokens_per_s" in r]
        best = max(peers, key=lambda r: r["tokens_per_s"], default=None)
        for r in rows:
            if r["case"] == case and r["ours"] and best is not None and "tokens_per_s" in r:
                r["best_peer"] = best["model"]
                r["vs_best_peer"] = r["tokens_per_s"] / best["tokens_per_s"]


def select(only: str | None, cases, models):
    """``--only``: comma list of fnmatch patterns; those matching case names pick cases, those matching model
    names pick models (all of either when none of the patterns names one)."""
    if not only:
        return list(cases), list(models)
    pats = [p for p in only.split(",") if p]
    pc = [p for p in pats if any(fnmatch.fnmatch(c.name, p) for c in cases)]
    pm = [p for p in pats if any(fnmatch.fnmatch(m.name, p) for m in models)]
    unknown = sorted(set(pats) - set(pc) - set(pm))
    if unknown:
        raise SystemExit(f"--only {unknown}: no case or model matches; cases: {', '.join(c.name for c in cases)}; "
                         f"models: {', '.join(m.name for m in models)}")
    pick = [c for c in cases if not pc or any(fnmatch.fnmatch(c.name, p) for p in pc)]
    return pick, [m for m in models if not pm or any(fnmatch.fnmatch(m.name, p) for p in pm)]


def environment(device: str) -> dict:
    import platform

    import transformers

    env = dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
               device=device)
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            env["nvidia_smi"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 else q.stderr.strip()[:200]
        except (OSError, subprocess.SubprocessError) as e:
            env["nvidia_smi"] = f"unavailable: {e}"
    env["commit"] = os.environ.get("MOSAIC_COMMIT")  # set by the caller where the copy's git history is not ours
    if env["commit"] is None:
        try:
            env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            env["commit"] = None
    return env


TARGET_PEER, TARGET_RATIO = "hf-bert-sdpa-compiled", 1.5  # issue 10: >= 1.5x HF BERT + torch.compile


def target_lines(rows: list[dict]) -> list[str]:
    """Per case: our fastest row against HF BERT + torch.compile (the issue's target) and peak memory against HF BERT's
    (eager and compiled; the target is <= both)."""
    lines = []
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case and r["ours"] and "tokens_per_s" in r]
        ref = next((r for r in rows if r["case"] == case and r["model"] == TARGET_PEER and "tokens_per_s" in r), None)
        if not mine or ref is None:
            continue
        best = max(mine, key=lambda r: r["tokens_per_s"])
        ratio = best["tokens_per_s"] / ref["tokens_per_s"]
        text = (f"{case}: {best['model']} / {TARGET_PEER} = {ratio:.2f}x (target >= {TARGET_RATIO}: "
                f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})")
        hf_mem = [r["peak_mem_gib"] for r in rows if r["case"] == case and r["model"].startswith("hf-bert")
                  and "peak_mem_gib" in r]
        if hf_mem and "peak_mem_gib" in best:
            ok = best["peak_mem_gib"] <= min(hf_mem)
            text += f"; peak memory {best['peak_mem_gib']:.2f} vs HF BERT {min(hf_mem):.2f} GiB ({'met' if ok else 'NOT met'})"
        lines.append(f"- {text}")
    return lines


def compare_markdown(rows: list[dict], env: dict, args) -> str:
    gpu = env.get("gpu", "CPU (smoke: tiny configs, fp32, not a measurement)")
    lines = [
        f"# MosaicBERT vs peers, one run on {gpu}", "",
        f"torch {env['torch']}, transformers {env['transformers']}, triton {env['triton']}, "
        f"driver/max SM clock/power limit: {env.get('nvidia_smi', 'n/a')}, commit {env.get('commit')}.", "",
        f"Training: fwd + bwd + fused AdamW, bf16 autocast, {MASK_PROB:.0%} of real tokens labelled, MLM loss (ours "
        "runs its last layer and head at the labelled tokens only; HF BERT and ModernBERT run them everywhere). "
        "Inference: bf16 weights, no grad, the encoder's last_hidden_state (no MLM head) for every model. "
        "Each model with its own default config (HF BERT: hidden and attention dropout 0.1; ours: hidden dropout "
        "0.1, none in attention; ModernBERT-base: none), random init. Lengths uniform with the stated mean padding; "
        "the same batches for every model. tokens/s counts real (non-padding) tokens per median step; step = median "
        f"of {args.steps} timed steps after {args.warmup} warmup steps (CUDA events). MFU: "
        "mosaic_bert.train.flops.step_flops (ours charged its real-token work, the peers their padded work, "
        "ModernBERT its own parameters) over the GPU's dense bf16 peak. Compiled: torch.compile(model, "
        f"mode={args.compile_mode!r}); first step / warmup s: the first step (compiling, for compiled rows) and the rest of the warmup (recompiles, e.g. for a new token count). vs best peer: ours / the fastest peer in the "
        "same case.", "",
        "| case | model | real tok/s | step ms | MFU | peak GiB | vs best peer | first step / warmup s | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['case']} | {r['model']} | | | | | | | {r.get('error') or r.get('skipped', '')} |")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else ""
        mem = f"{r['peak_mem_gib']:.2f}" if "peak_mem_gib" in r else ""
        vs = f"**{r['vs_best_peer']:.2f}x** ({r['best_peer']})" if "vs_best_peer" in r else ""
        note = "; ".join(x for x in (f"{r['graph_breaks']} graph breaks" if r.get("graph_breaks") else "",
                                     "bucketed unpadding" if "bucketed" in r.get("inputs", "") else
                                     "CPU-side unpadding" if r.get("inputs", "padded") != "padded" else "",
                                     f"mode {r['compile_mode']}" if r.get("compile_mode") else "") if x)
        lines.append(f"| {r['case']} | {r['model']} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | {mfu} | "
                     f"{mem} | {vs} | {r['first_step_s']:.1f} / {r['warmup_s']:.1f} | {note} |")
    goals = target_lines(rows)
    if goals:
        lines += ["", "Targets (issue 10):", ""] + goals
    return "\n".join(lines) + "\n"


def compare_plot(rows: list[dict], path: str, title: str) -> bool:
    """Grouped bars of real tokens/s per case, training and inference side by side."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw=dict(width_ratios=[2, 1]))
    for ax, kind in zip(axes, ("train", "infer")):
        cases = list(dict.fromkeys(r["case"] for r in rows if r["kind"] == kind))
        width = 0.8 / max(1, len(models))
        for j, m in enumerate(models):
            by = {r["case"]: r for r in rows if r["model"] == m}
            xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(cases))]
            ax.bar(xs, [by.get(c, {}).get("tokens_per_s", 0.0) for c in cases], width, label=m)
            for x, c in zip(xs, cases):  # our bars carry the ratio to the best peer; failed rows an x
                r = by.get(c, {})
                if "vs_best_peer" in r:
                    ax.annotate(f"{r['vs_best_peer']:.2f}x", (x, r["tokens_per_s"]), ha="center", va="bottom",
                                fontsize=7)
                elif "error" in r:
                    ax.annotate("x", (x, 0), ha="center", va="bottom", fontsize=8, color="red")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([c.split("-", 1)[1] for c in cases], rotation=20, fontsize=8)
        ax.set_title("training step" if kind == "train" else "inference forward")
        ax.set_ylabel("real tokens/s")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_compare(rows: list[dict], env: dict, args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"compare_{args.tag}"
    args_d = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    stem.with_suffix(".json").write_text(json.dumps(dict(env=env, args=args_d, rows=rows), indent=1))
    md = compare_markdown(rows, env, args)
    stem.with_suffix(".md").write_text(md)
    compare_plot(rows, str(stem.with_suffix(".png")), f"real tokens/s, {env.get('gpu', 'CPU smoke')}")
    print(md, flush=True)


@mode("compare")
def run_compare(args, models=MODELS) -> list[dict]:
    """Every (case, model) row in one process: ours (eager, compiled) against HF BERT sdpa (eager, compiled) and
    ModernBERT-base sdpa. --smoke: tiny configs on CPU, fp32, one step (the code path, not a measurement)."""
    args.device = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("compare needs a CUDA GPU (or --smoke for the CPU code path)")
    if args.smoke:
        args.warmup, args.steps, args.batches = min(args.warmup, 1), 1, 1
    for limit in ("recompile_limit", "cache_size_limit"):  # the name differs across torch versions
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))
    cases, models = select(args.only, CASES, models)
    from mosaic_bert.train.flops import peak_flops

    peak = peak_flops(torch.device(args.device))
    layout_ok = _takes_cpu_layout()
    env = environment(args.device)
    print(env, flush=True)
    rows, t_start = [], time.perf_counter()
    for case in cases:
        case = case.smoke() if args.smoke else case
        cpu = case_batches(case, args.batches, TINY["vocab_size"] if args.smoke else BATCH_VOCAB, seed=args.seed)
        plain = [_to(b, args.device) for b in cpu]
        with_layout = [_to(cpu_layout(b), args.device) for b in cpu] if layout_ok else plain
        mark_bucket_dims(with_layout)  # the token count varies by batch: compile for any, not first for one then again
        bucketed = [_to(bucketed_inputs(b), args.device) for b in cpu] if layout_ok else plain
        mark_bucket_dims(bucketed)
        for spec in models:
            batches = bucketed if spec.bucketed else with_layout if spec.cpu_layout else plain
            if args.smoke and spec.compiled and not args.smoke_compile:
                row = dict(skipped="compiled rows are skipped in --smoke (add --smoke-compile)")
            elif time.perf_counter() - t_start > args.budget_s:
                row = dict(skipped=f"time budget --budget-s {args.budget_s:.0f} spent")
            else:
                row = run_row(spec, case, batches, args, peak)
                row["inputs"] = ("padded" if batches is plain else "padded + bucketed CPU-side unpadding"
                                 if batches is bucketed else "padded + CPU-side unpadding")
            row = {**dict(case=case.name, kind=case.kind, model=spec.name, ours=spec.ours), **row}
            rows.append(row)
            print(json.dumps(row), flush=True)
    add_ratios(rows)
    env["wall_s"] = round(time.perf_counter() - t_start, 1)
    write_compare(rows, env, args)
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="compare", choices=sorted(MODES))
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "benchmarks", "results"),
                   help="output folder (default: $OUT if set, else benchmarks/results)")
    p.add_argument("--tag", default="h100")
    p.add_argument("--verbose", action="store_true")
    c = p.add_argument_group("compare")
    c.add_argument("--only", default=None, help="comma list of fnmatch patterns over case and model names")
    c.add_argument("--smoke", action="store_true", help="CPU, tiny configs, fp32, one step: the code path only")
    c.add_argument("--smoke-compile", action="store_true", help="with --smoke: run the compiled rows too")
    c.add_argument("--warmup", type=int, default=5, help="steps before timing (the first one compiles)")
    c.add_argument("--steps", type=int, default=15, help="timed steps per row")
    c.add_argument("--batches", type=int, default=3, help="distinct batches per case, cycled")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--budget-s", type=float, default=380.0,
                   help="no new row starts after this many seconds (the rest are recorded as skipped)")
    c.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's default)")
    c.add_argument("--compile-backend", default="inductor")
    a = p.add_argument_group("attention")
    a.add_argument("--lengths", default="128,512,1024,2048")
    a.add_argument("--tokens", type=int, default=16384)
    a.add_argument("--fill", type=float, default=0.6)
    a.add_argument("--heads", type=int, default=12)
    a.add_argument("--headdim", type=int, default=64)
    a.add_argument("--rep", type=int, default=200, help="do_bench rep (ms)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return MODES[args.mode](args)


if __name__ == "__main__":
    main()
