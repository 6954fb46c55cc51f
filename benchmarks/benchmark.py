#!/usr/bin/env python
"""Benchmarks for mosaic-bert.  Modes are registered in ``MODES``; add new ones
with the ``@mode("name")`` decorator.

    python benchmarks/benchmark.py attention --out benchmarks/results
    python benchmarks/benchmark.py model --out benchmarks/results

model: training-step time of MosaicBERT-base (Triton / SDPA attention, fused / eager GeGLU) against transformers'
BertForMaskedLM at batch 256 x 128, full rows and ~60% fill (see model_mode).

attention: forward+backward time (median of triton.testing.do_bench) and peak
extra memory of one attention layer on a varlen batch of ~16k real tokens at
~60% fill, 12 heads, head dim 64, bf16, for our Triton kernel and baselines:
  ours            flash_attn_triton.flash_attn_varlen_func (ALiBi in kernel)
  ours_qkvpacked  flash_attn_triton.flash_attn_varlen_qkvpacked_func
  sdpa_cudnn      SDPA, cuDNN backend, padded batch + materialised ALiBi/pad bias
  sdpa_efficient  SDPA, memory-efficient backend, same inputs
  flex            FlexAttention (compiled) on packed tokens, ALiBi score_mod +
                  document mask (block-mask build time reported separately)
  eager           matmul + softmax + matmul on the padded batch with the bias
  varlen_floor    torch.nn.attention.varlen.varlen_attn (flash-attn 2 in torch,
                  NO ALiBi) on the unpadded tokens: the floor
"""

import argparse
import importlib.util
import inspect
import json
import math
import os
import time
import traceback
from pathlib import Path

import torch

from mosaic_bert.modeling import flash_attn_triton
from mosaic_bert.modeling.modeling_bert import alibi_bias, alibi_slopes_list

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
def attention_methods(lens, L, H, D, dtype, fa):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = "cuda"
    B, T = len(lens), sum(lens)
    Lmax = max(lens)
    cu = torch.zeros(B + 1, dtype=torch.int32, device=dev)
    cu[1:] = torch.tensor(lens, device=dev).cumsum(0)
    g = torch.Generator(device=dev).manual_seed(0)
    qkv = torch.randn(T, 3, H, D, device=dev, dtype=dtype, generator=g)
    dout = torch.randn(T, H, D, device=dev, dtype=dtype, generator=g)
    slopes = torch.tensor(alibi_slopes_list(H), device=dev, dtype=torch.float32)
    scale = 1.0 / math.sqrt(D)

    # padded layout (B, H, L, D)
    lens_t = torch.tensor(lens, device=dev)
    valid = torch.arange(L, device=dev)[None, :] < lens_t[:, None]  # (B, L)
    idx = valid.flatten().nonzero().squeeze(1)

    def pad(x):  # (T, H, D) -> (B, H, L, D)
        out = x.new_zeros(B * L, H, D)
        out[idx] = x
        return out.view(B, L, H, D).transpose(1, 2).contiguous()

    qp, kp, vp = (pad(qkv[:, i]) for i in range(3))
    dop = pad(dout)
    bias = alibi_bias(slopes, L)[None].repeat(B, 1, 1, 1)
    bias = bias.masked_fill(~valid[:, None, None, :], float("-inf")).to(dtype)

    methods = {}

    # ours ----------------------------------------------------------------
    q0 = qkv[:, 0].contiguous().requires_grad_(True)
    k0 = qkv[:, 1].contiguous().requires_grad_(True)
    v0 = qkv[:, 2].contiguous().requires_grad_(True)

    def ours_fwd():
        return fa.flash_attn_varlen_func(q0, k0, v0, cu, cu, Lmax, Lmax, alibi_slopes=slopes)

    methods["ours"] = dict(fwd=ours_fwd, leaves=[q0, k0, v0], dout=dout, packed=True)

    qkv_l = qkv.clone().requires_grad_(True)

    def ours_packed_fwd():
        return fa.flash_attn_varlen_qkvpacked_func(qkv_l, cu, Lmax, alibi_slopes=slopes)

    methods["ours_qkvpacked"] = dict(fwd=ours_packed_fwd, leaves=[qkv_l], dout=dout,
                                     packed=True)

    # SDPA with materialised bias --------------------------------------------
    qpl, kpl, vpl = (t.clone().requires_grad_(True) for t in (qp, kp, vp))
    for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)):
        def f(backend=backend):
            with sdpa_kernel([backend]):
                return torch.nn.functional.scaled_dot_product_attention(
                    qpl, kpl, vpl, attn_mask=bias, scale=scale)
        methods[name] = dict(fwd=f, leaves=[qpl, kpl, vpl], dout=dop, packed=False)

    # eager ---------------------------------------------------------------
    def eager():
        s = torch.matmul(qpl, kpl.transpose(-1, -2)) * scale + bias
        p = torch.softmax(s, dim=-1, dtype=torch.float32).to(dtype)
        return torch.matmul(p, vpl)

    methods["eager"] = dict(fwd=eager, leaves=[qpl, kpl, vpl], dout=dop, packed=False)

    # FlexAttention -----------------------------------------------------------
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        Tp = ((T + 127) // 128) * 128
        doc = torch.full((Tp,), -1, dtype=torch.int32, device=dev)
        doc[:T] = torch.repeat_interleave(
            torch.arange(B, device=dev, dtype=torch.int32), lens_t)

        def mask_mod(b, h, qi, ki):
            return doc[qi] == doc[ki]

        def score_mod(score, b, h, qi, ki):
            return score - slopes[h] * (qi - ki).abs()

        def build():
            return create_block_mask(mask_mod, None, None, Tp, Tp, device=dev)

        flex_c = torch.compile(flex_attention, dynamic=False)

        def padT(x):  # (T, H, D) -> (1, H, Tp, D)
            out = x.new_zeros(Tp, H, D)
            out[:T] = x
            return out.transpose(0, 1).unsqueeze(0).contiguous()

        qf, kf, vf = (padT(qkv[:, i]).requires_grad_(True) for i in range(3))
        dof = padT(dout)
        bm_holder = {}

        def flex_fwd():
            if "bm" not in bm_holder:
                bm_holder["bm"] = build()
            return flex_c(qf, kf, vf, score_mod=score_mod, block_mask=bm_holder["bm"],
                          scale=scale)

        methods["flex"] = dict(fwd=flex_fwd, leaves=[qf, kf, vf], dout=dof,
                               packed="flex", build=build, T=T)
    except Exception as e:  # noqa: BLE001
        methods["flex"] = dict(error=f"{type(e).__name__}: {e}")

    # floor: varlen_attn without ALiBi ----------------------------------------
    try:
        from torch.nn.attention.varlen import varlen_attn
        qv, kv, vv = (qkv[:, i].contiguous().requires_grad_(True) for i in range(3))

        def varlen_fwd():
            return varlen_attn(qv, kv, vv, cu, cu, Lmax, Lmax, scale=scale)

        methods["varlen_floor"] = dict(fwd=varlen_fwd, leaves=[qv, kv, vv], dout=dout,
                                       packed=True, no_alibi=True)
    except Exception as e:  # noqa: BLE001
        methods["varlen_floor"] = dict(error=f"{type(e).__name__}: {e}")

    def to_packed(o, kind):
        if kind is True:
            return o
        if kind == "flex":
            return o[0].transpose(0, 1)[:T]
        return o.transpose(1, 2).reshape(B * L, H, D)[idx]

    return methods, to_packed


def bench_attention_L(L, args, fa):
    import triton.testing as tt

    H, D, dtype = args.heads, args.headdim, torch.bfloat16
    lens = make_batch(L, args.tokens, args.fill, seed=L)
    B, T = len(lens), sum(lens)
    sum_sq = sum(n * n for n in lens)
    flops_fwd = 4.0 * sum_sq * H * D  # QK^T and PV, non-causal
    flops_fb = 3.5 * flops_fwd       # backward = 2.5x forward (5 matmuls vs 2)
    methods, to_packed = attention_methods(lens, L, H, D, dtype, fa)
    rows = []
    ref_out = None
    for name, m in methods.items():
        row = dict(L=L, batch=B, tokens=T, method=name)
        if "error" in m:
            row["error"] = m["error"]
            rows.append(row)
            print(f"L={L} {name}: n/a ({m['error']})", flush=True)
            continue
        try:
            fwd, leaves, dout = m["fwd"], m["leaves"], m["dout"]

            def step():
                o = fwd()
                o.backward(dout)

            t0 = time.perf_counter()
            o = fwd()  # compile / autotune
            torch.cuda.synchronize()
            o.backward(dout)
            torch.cuda.synchronize()
            row["first_call_s"] = time.perf_counter() - t0
            op = to_packed(o.detach(), m["packed"]).float()
            if name == "ours":
                ref_out = op
            elif ref_out is not None:
                row["rel_diff_vs_ours"] = ((op - ref_out).norm() / ref_out.norm()).item()
            del o, op
            for x in leaves:
                x.grad = None
            # forward alone, graph recorded as in training (no recompile for
            # compiled methods)
            row["fwd_ms"] = tt.do_bench(fwd, warmup=25, rep=args.rep,
                                        return_mode="median")
            row["fwd_bwd_ms"] = tt.do_bench(step, warmup=25, rep=args.rep,
                                            grad_to_none=leaves, return_mode="median")
            for x in leaves:
                x.grad = None
            # GPU time without host overhead: the step captured in a CUDA graph
            try:
                row["fwd_bwd_graph_ms"] = tt.do_bench_cudagraph(
                    step, rep=args.rep, grad_to_none=leaves, return_mode="median")
            except Exception as e:  # noqa: BLE001
                row["graph_error"] = f"{type(e).__name__}: {str(e)[:120]}"
                torch.cuda.synchronize()
            for x in leaves:
                x.grad = None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            row["peak_mem_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            for x in leaves:
                x.grad = None
            row["tflops_fwd_bwd"] = flops_fb / (row["fwd_bwd_ms"] * 1e-3) / 1e12
            if "build" in m:
                row["block_mask_build_ms"] = tt.do_bench(m["build"], warmup=5, rep=50,
                                                         return_mode="median")
            if m.get("no_alibi"):
                row["note"] = "no ALiBi (floor)"
        except Exception as e:  # noqa: BLE001
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            row["error"] = msg
            if args.verbose:
                traceback.print_exc()
        rows.append(row)
        print(f"L={L} {name}: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row.items() if k not in ("L", "method")), flush=True)
        torch.cuda.empty_cache()
    return rows


def summarize(rows, Ls):
    by = {(r["L"], r["method"]): r for r in rows}
    names = []
    for r in rows:
        if r["method"] not in names:
            names.append(r["method"])
    lines = ["| L | batch | method | fwd+bwd GPU ms (graph) | fwd+bwd ms (eager launch) | fwd ms (eager) | peak MB | TFLOP/s (graph) | vs ours (graph) | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def t(r):
        return r.get("fwd_bwd_graph_ms", r.get("fwd_bwd_ms"))

    goals = []
    for L in Ls:
        ours = by.get((L, "ours"), {})
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
            if "rel_diff_vs_ours" in r:
                note += f" rel diff vs ours {r['rel_diff_vs_ours']:.1e}"
            lines.append(
                f"| {L} | {r['batch']} | {n} | {g_txt} | {r['fwd_bwd_ms']:.3f} | {r['fwd_ms']:.3f} | "
                f"{r['peak_mem_mb']:.0f} | {tfl:.0f} | {rel} | {note.strip()} |")
        floor = by.get((L, "varlen_floor"), {})
        sdpa = [t(by[(L, n)]) for n in ("sdpa_cudnn", "sdpa_efficient")
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
            ax.plot(xs, ys, marker="o", label=n, linewidth=2.5 if n == "ours" else 1.2)
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
    fa = flash_attn_triton
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
        rows += bench_attention_L(L, args, fa)
    configs = {}
    for kn in ("_fwd_kernel", "_bwd_kv_kernel", "_bwd_q_kernel"):
        k = getattr(fa, kn)
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
          "one fwd+bwd above what was allocated before it. Padded methods (sdpa_*, "
          "eager) get the padded batch and a pre-built (B, H, L, L) bias for free.",
          "", table, "", "Goals:", ""] + [f"- {g}" for g in goals] + [
          "", "Autotuned configs:", "", "```", json.dumps(configs, indent=1), "```"]
    with open(os.path.join(args.out, f"attention_bench_{tag}.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    plot(rows, Ls, os.path.join(args.out, f"attention_bench_{tag}.png"))
    print(table)
    print("\n".join(goals))


MODEL_PEAK = 989e12  # H100 SXM dense bf16


def _model_batch(batch, seqlen, fill, vocab, mask_prob, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    if fill >= 1.0:
        lengths = torch.full((batch,), seqlen)
    else:
        lengths = torch.randint(int(seqlen * (2 * fill - 1)), seqlen + 1, (batch,), generator=g).clamp(8, seqlen)
    mask = (torch.arange(seqlen)[None] < lengths[:, None]).long()
    ids = torch.randint(1000, vocab - 100, (batch, seqlen), generator=g) * mask
    labels = torch.where((torch.rand(batch, seqlen, generator=g) < mask_prob) & mask.bool(), ids, -100)
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=mask, labels=labels).items()}


def _model_step_time(model, batch, steps=20, warmup=5):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


@mode("model")
def model_mode(args):
    """Training step (fwd + bwd + fused AdamW, bf16 autocast) of MosaicBERT-base with Triton and SDPA attention,
    with and without the fused GeGLU, against transformers' BertForMaskedLM; full rows and ~60% fill; real tokens/s.
    MFU: the pretraining loop's FLOP count (`mosaic_bert.train.flops.step_flops`: weight matmuls, attention over each
    attended sequence, the MLM decoder where it runs; HF BERT is charged its padded work) over 989 TFLOP/s."""
    import transformers

    from mosaic_bert import BertConfig, BertForMaskedLM
    from mosaic_bert.train.flops import batch_stats, model_flop_params, step_flops

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = "cuda"
    rows = []
    for fill in (1.0, 0.6):
        for name in ("mosaic-triton", "mosaic-triton-eager-geglu", "mosaic-sdpa", "hf-bert-sdpa"):
            torch.manual_seed(0)
            if name.startswith("mosaic"):
                cfg = BertConfig(attention_backend=name.split("-")[1], fused_geglu="eager-geglu" not in name)
                model = BertForMaskedLM(cfg)
                mask_prob = 0.3
            else:
                cfg = transformers.BertConfig(vocab_size=30528, attn_implementation="sdpa")
                model = transformers.BertForMaskedLM(cfg)
                mask_prob = 0.15
            model = model.to(dev)
            batch = _model_batch(args.batch, args.seqlen, fill, cfg.vocab_size, mask_prob, dev)
            n_tokens = int(batch["attention_mask"].sum())
            try:
                sec = _model_step_time(model, batch)
                tps = n_tokens / sec
                family = "mosaic" if name.startswith("mosaic") else "hf"
                mfu = step_flops(*model_flop_params(model), cfg.num_hidden_layers, *batch_stats(batch, family))
                mfu = mfu / sec / MODEL_PEAK
                mem = torch.cuda.max_memory_allocated() / 2**30
                rows.append(dict(model=name, fill=fill, step_ms=sec * 1e3, tokens_per_s=tps, mfu=mfu, peak_gib=mem))
            except Exception as e:  # report, keep going
                rows.append(dict(model=name, fill=fill, error=repr(e)[:200]))
            print(rows[-1], flush=True)
            del model
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    lines = [
        f"# MosaicBERT-base training step, {torch.cuda.get_device_name()}, batch {args.batch} x {args.seqlen}, bf16",
        "",
        f"torch {torch.__version__}, transformers {transformers.__version__}. Step = fwd + bwd + fused AdamW; "
        "MosaicBERT masks 30%, HF BERT 15% (each model's recipe). tokens/s counts real (non-padding) tokens. "
        "Hidden dropout 0.1 everywhere. `eager-geglu`: MosaicBERT with config.fused_geglu=False. MFU: the pretraining "
        "loop's FLOP count (mosaic_bert.train.flops.step_flops; HF BERT charged its padded work) over 989 TFLOP/s.",
        "",
        "| model | fill | step (ms) | tokens/s | MFU | peak mem (GiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['fill']:.0%} | error: {r['error']} | | | |")
        else:
            lines.append(f"| {r['model']} | {r['fill']:.0%} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
                         f"{r['mfu']:.1%} | {r['peak_gib']:.1f} |")
    (out / f"model_step_{args.tag}.md").write_text("\n".join(lines) + "\n")
    (out / f"model_step_{args.tag}.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--tag", default="h100")
    p.add_argument("--lengths", default="128,512,1024,2048")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--fill", type=float, default=0.6)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--headdim", type=int, default=64)
    p.add_argument("--rep", type=int, default=200, help="do_bench rep (ms)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--batch", type=int, default=256, help="model mode: rows per step")
    p.add_argument("--seqlen", type=int, default=128, help="model mode: row length")
    args = p.parse_args(argv)
    MODES[args.mode](args)


if __name__ == "__main__":
    main()
