#!/usr/bin/env python
"""Where a compiled MosaicBERT step spends its GPU time, and how variants of it compare (one device call).

    PYTHONPATH=$PWD python3 benchmarks/profile_step.py --out $OUT [--variants a,b] [--cases train,infer] [--profile]

Uses benchmark.py's batches (seed 0, 3 batches, cycled) and step functions, so numbers compare with `compare`.
Per variant: compile, warm up (every batch), time --steps steps (CUDA events, median), and with --profile record
--profile-steps steps with torch.profiler: GPU kernel time by category (GEMM, attention, Inductor's fused kernels by
kind, optimizer, copies, other), the GPU's idle time inside the window, the top kernels. Checks first (--checks):
the bucketed inputs against the plain padded batch in eager bf16 (loss and gradients), and the compiled bucketed
step against eager (no dropout, a 2-layer base-width model). Writes profile_step.json and profile_step.md to --out.
"""

import argparse
import json
import os
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark as bm  # noqa: E402

VARIANTS = {
    # name: (input layout, torch.compile mode, inductor config overrides, patch)
    "cpu-layout": ("cpu", None, {}, None),
    "bucketed": ("bucketed", None, {}, None),
    "bucketed-cg": ("bucketed", "reduce-overhead", {}, None),
    "bucketed-autotune": ("bucketed", "max-autotune-no-cudagraphs", {}, None),
    "bucketed-cg-autotune": ("bucketed", "max-autotune", {}, None),
    "bucketed-cd": ("bucketed", None, {"coordinate_descent_tuning": True}, None),
    # A/B of single changes, same process: the GeGLU as the plain expression Inductor fuses (before the op), and
    # the attention backward as the two-kernel version (before the fused short-sequence kernel)
    "bucketed-old-geglu": ("bucketed", None, {}, "old-geglu"),
    "bucketed-no-fused-bwd": ("bucketed", None, {}, "no-fused-bwd"),
    # the embedding and attention-output dropouts as Inductor's Philox draws (before the counter hash)
    "bucketed-cg-philox-hidden": ("bucketed", "reduce-overhead", {}, "philox-hidden"),
    # Inductor's mix-order reductions (LayerNorm backward + its weight/bias sums in one kernel that leaves partial
    # sums, one per `split_size` rows, to a second reduction): the split size (default: rows / (8 x SMs), >= 16),
    # tuned per kernel, or the fusion off
    "bucketed-cg-mo64": ("bucketed", "reduce-overhead", {"triton.mix_order_reduction_split_size": 64}, None),
    "bucketed-cg-mo128": ("bucketed", "reduce-overhead", {"triton.mix_order_reduction_split_size": 128}, None),
    "bucketed-cg-mo-tuned": ("bucketed", "reduce-overhead", {"triton.mix_order_reduction_autotune_split_size": True},
                             None),
    "bucketed-cg-no-mo": ("bucketed", "reduce-overhead", {"triton.mix_order_reduction": False}, None),
    # eager (not compiled) on the padded batch, as the `ours` row of benchmark.py; and with the GeGLU forward tile
    # of before (4 rows x 4 warps)
    "eager": ("padded", "eager", {}, None),
    "eager-geglu-tile44": ("padded", "eager", {}, "geglu-tile44"),
}


class _Patch:
    """Undo-able switch of one change for an A/B row."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        from mosaic_bert.modeling import flash_attn_triton as fa
        from mosaic_bert.modeling import modeling_bert as mb

        self.saved = (mb.geglu_dropout, fa._FUSED_BWD_MAX_SEQLEN, mb.hidden_dropout, fa._GEGLU_FWD_TILE)
        if self.name == "geglu-tile44":
            fa._GEGLU_FWD_TILE = (4, 4)
        elif self.name == "philox-hidden":
            mb.hidden_dropout = lambda x, dropout, training: torch.nn.functional.dropout(x, dropout.p, training)
        elif self.name == "old-geglu":
            def plain(gate_up, p):
                a, b = gate_up.split(gate_up.shape[-1] // 2, dim=-1)
                return torch.nn.functional.dropout(torch.nn.functional.gelu(a) * b, p, True)
            mb.geglu_dropout = plain
        elif self.name == "no-fused-bwd":
            fa._FUSED_BWD_MAX_SEQLEN = 0
        return self

    def __exit__(self, *exc):
        from mosaic_bert.modeling import flash_attn_triton as fa
        from mosaic_bert.modeling import modeling_bert as mb

        mb.geglu_dropout, fa._FUSED_BWD_MAX_SEQLEN, mb.hidden_dropout, fa._GEGLU_FWD_TILE = self.saved
CASES = {"train": bm.Case("train", 256, 128, 0.25), "infer": bm.Case("infer", 512, 128, 0.25)}


def category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("gemm", "cutlass", "xmma", "nvjet", "cublas", "triton_tem", "mm_")):
        return "gemm"
    if "_fwd_kernel" in n or "_bwd_kv_kernel" in n or "_bwd_q_kernel" in n or "_bwd_preprocess" in n:
        return "attention"
    if "adam" in n or "multi_tensor" in n:
        return "optimizer"
    for kind in ("triton_per", "triton_red", "triton_poi"):
        if n.startswith(kind):
            return {"triton_per": "inductor persistent-reduction", "triton_red": "inductor reduction",
                    "triton_poi": "inductor pointwise"}[kind]
    if "memcpy" in n or "memset" in n or "copy" in n or "fill" in n:
        return "copy/fill"
    if "index" in n or "scatter" in n or "gather" in n or "embedding" in n:
        return "index/embedding"
    if "reduce" in n:
        return "aten reduction"
    return "other"


def kernel_summary(prof, n_steps: int) -> dict:
    """Per-step GPU time by category, idle time in the window, top kernels (from the profiler's device events)."""
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if not kernels:
        return dict(error="no device events")
    spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    busy, cur_s, cur_e = 0.0, spans[0][0], spans[0][1]
    for s, e in spans[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    window = spans[-1][1] - spans[0][0]
    by_cat, by_name = {}, {}
    for e in kernels:
        d = e.time_range.end - e.time_range.start
        c = category(e.name)
        by_cat[c] = by_cat.get(c, 0.0) + d
        k = by_name.setdefault(e.name, [0.0, 0])
        k[0] += d
        k[1] += 1
    per = 1e3 * n_steps  # us -> ms per step
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:30]
    return dict(window_ms=window / per, busy_ms=busy / per, idle_ms=(window - busy) / per,
                kernels_per_step=len(kernels) / n_steps,
                by_category_ms={c: v / per for c, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
                top=[dict(name=n[:140], ms=v[0] / per, calls=v[1] / n_steps) for n, v in top])


def who_launches(prof, pattern: str) -> dict:
    """For the kernels whose name matches ``pattern``: the chains of CPU ops that launched them (counted)."""
    import re

    rx = re.compile(pattern)
    chains = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            continue
        hits = [k for k in (getattr(e, "kernels", None) or []) if rx.search(getattr(k, "name", ""))]
        if not hits:
            continue
        chain, p = [f"{e.name}{e.input_shapes if getattr(e, 'input_shapes', None) else ''}"], e.cpu_parent
        while p is not None and len(chain) < 7:
            chain.append(p.name[:80])
            p = p.cpu_parent
        key = " <- ".join(chain)
        chains[key] = chains.get(key, 0) + len(hits)
    return dict(sorted(chains.items(), key=lambda kv: -kv[1])[:20])


def inputs_for(layout: str, cpu_batches: list[dict], device: str) -> list[dict]:
    if layout == "padded":
        return [bm._to(b, device) for b in cpu_batches]
    if layout == "cpu":
        out = [bm._to(bm.cpu_layout(b), device) for b in cpu_batches]
        bm.mark_bucket_dims(out)
        return out
    out = [bm._to(bm.bucketed_inputs(b), device) for b in cpu_batches]
    bm.mark_bucket_dims(out)
    return out


def run_variant(case, name, cpu_batches, args) -> dict:
    layout, mode, inductor, patch = VARIANTS[name]
    with _Patch(patch):
        return _run_variant(case, name, cpu_batches, args, layout, mode, inductor)


def _run_variant(case, name, cpu_batches, args, layout, mode, inductor) -> dict:
    row = dict(case=case.name, variant=name, mode=mode, inductor=inductor)
    torch._dynamo.reset()
    bm._graph_breaks(clear=True)
    bm._free("cuda")
    batches = inputs_for(layout, cpu_batches, "cuda")
    row["token_buckets"] = sorted({int(b["indices"].shape[0]) for b in batches if "indices" in b})
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = bm._ours(case.kind, False)
    if case.kind == "infer":
        model = model.to(torch.bfloat16)
    old = {k: getattr(torch._inductor.config, k) for k in inductor}
    for k, v in inductor.items():
        setattr(torch._inductor.config, k, v)
    try:
        compiled = model if mode == "eager" else torch.compile(model, mode=mode)
        step = bm.make_step(compiled, case, amp=True, device="cuda", graphs=mode in ("reduce-overhead", "max-autotune"))
        t0 = time.perf_counter()
        step(batches[0])
        torch.cuda.synchronize()
        row["first_step_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(1, max(args.warmup, len(batches))):
            step(batches[i % len(batches)])
        torch.cuda.synchronize()
        row["warmup_s"] = time.perf_counter() - t0
        timer = bm._Timer(True)
        for i in range(args.steps):
            timer(lambda b=batches[i % len(batches)]: step(b))
        secs = timer.seconds()
        real = sum(float(cpu_batches[i % len(batches)]["attention_mask"].sum()) for i in range(args.steps)) / args.steps
        med = statistics.median(secs)
        row.update(step_ms=med * 1e3, min_step_ms=min(secs) * 1e3, tokens_per_s=real / med,
                   graph_breaks=bm._graph_breaks(), peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30)
        if args.profile and name in args.profile_variants.split(","):
            from torch.profiler import ProfilerActivity, profile

            torch.cuda.synchronize()
            activities = [ProfilerActivity.CUDA, ProfilerActivity.CPU]
            with profile(activities=activities, record_shapes=bool(args.who)) as prof:
                for i in range(args.profile_steps):
                    step(batches[i % len(batches)])
                torch.cuda.synchronize()
            row["profile"] = kernel_summary(prof, args.profile_steps)
            if args.who:
                row["profile"]["who"] = who_launches(prof, args.who)
                print(json.dumps(row["profile"]["who"], indent=1), flush=True)
    except Exception as e:  # noqa: BLE001 -- a failing variant is a result
        row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
        traceback.print_exc()
    finally:
        for k, v in old.items():
            setattr(torch._inductor.config, k, v)
    print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
    return row


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def checks() -> list[dict]:
    """Bucketed vs padded (eager, bf16 autocast, base model, dropout off); compiled bucketed vs eager bucketed."""
    from mosaic_bert import BertConfig, BertForMaskedLM

    out = []
    case = CASES["train"]
    cpu = bm.case_batches(case, 1, bm.BATCH_VOCAB, seed=11)[0]
    plain = bm._to(cpu, "cuda")
    buck = bm._to(bm.bucketed_inputs(cpu), "cuda")

    def run(model, b, call=None):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            o = (call if call is not None else model)(**b)
        o.loss.backward()
        return o.loss.detach().float(), {n: p.grad.detach().float().clone() for n, p in model.named_parameters()
                                         if p.grad is not None}

    out.extend(geglu_checks())
    for layers, compiled in ((12, False), (2, True)):
        torch.manual_seed(0)
        cfg = BertConfig(hidden_dropout_prob=0.0, num_hidden_layers=layers)
        model = BertForMaskedLM(cfg).cuda().train()
        ref_loss, ref_g = run(model, plain)
        if compiled:
            torch._dynamo.reset()
            got_loss, got_g = run(model, buck, torch.compile(model, fullgraph=True))
            what = "compiled bucketed (fullgraph) vs eager padded, 2 layers"
        else:
            got_loss, got_g = run(model, buck)
            what = "eager bucketed vs eager padded, 12 layers"
        worst = max((rel(got_g[n], ref_g[n]) for n in ref_g if n in got_g), default=float("nan"))
        dl = abs(got_loss.item() - ref_loss.item())
        ok = dl < 2e-2 and worst < 3e-2 and set(got_g) == set(ref_g)
        out.append(dict(check=what, loss=ref_loss.item(), loss_diff=dl, worst_grad_rel=worst, ok=ok))
        print(json.dumps(out[-1]), flush=True)
    return out


from mosaic_bert.modeling import flash_attn_triton as fa  # noqa: E402

if fa.HAS_TRITON:
    import triton
    import triton.language as tl

    from mosaic_bert.modeling.flash_attn_triton import _geglu_fwd_quarters, _geglu_tile

    @triton.jit
    def _philox_geglu_fwd_kernel(GU, H, MASK, SEED, n_rows, n_cols, n_col_blocks, threshold, scale,
                                 BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        rows, c0, offs = _geglu_tile(n_col_blocks, BLOCK_R, BLOCK_C)
        r0, r1, r2, r3 = tl.randint4x(tl.load(SEED), offs)  # one Philox call per four draws; 16 bits of each
        _geglu_fwd_quarters(GU, H, MASK, rows, c0, offs, (r0 >> 16).to(tl.int32), (r1 >> 16).to(tl.int32),
                            (r2 >> 16).to(tl.int32), (r3 >> 16).to(tl.int32), n_rows, n_cols, threshold, scale,
                            True, BLOCK_C // 4)


def philox_geglu_fwd(gate_up, seed, p):
    """The GeGLU forward kernel as it was before the counter hash: one Philox call per four draws (an A/B timing of
    the draws only; 16 bits of each Philox output against the same threshold)."""
    n, i2 = gate_up.shape
    i = i2 // 2
    h = torch.empty((n, i), dtype=gate_up.dtype, device=gate_up.device)
    mask = torch.empty(fa._geglu_mask_shape(n, i, p), dtype=torch.uint8, device=gate_up.device)
    n_cb = triton.cdiv(i, fa._GEGLU_BLOCK_C)
    rows, warps = fa._GEGLU_FWD_TILE
    _philox_geglu_fwd_kernel[(triton.cdiv(n, rows), n_cb)](
        gate_up, h, mask, seed, n, i, n_cb, fa.dropout_threshold(p), 1.0 / (1.0 - p), BLOCK_R=rows,
        BLOCK_C=fa._GEGLU_BLOCK_C, num_warps=warps)
    return h, mask


def geglu_tile_sweep(gate_up, dh, seed, p) -> dict:
    """The GeGLU kernels' time (ms) at other tile heights (BLOCK_R) and warp counts than the op's; the dropout
    mask's layout depends only on BLOCK_C, so these change nothing but speed."""
    n, i2 = gate_up.shape
    i = i2 // 2
    n_cb = triton.cdiv(i, fa._GEGLU_BLOCK_C)
    h = torch.empty((n, i), dtype=gate_up.dtype, device=gate_up.device)
    mask = torch.empty(fa._geglu_mask_shape(n, i, p), dtype=torch.uint8, device=gate_up.device)
    dgu = torch.empty_like(gate_up)
    thr, scale = fa.dropout_threshold(p), 1.0 / (1.0 - p)
    out = {}
    for block_r in (1, 2, 4, 8, 16):
        for warps in (2, 4, 8):
            grid = (triton.cdiv(n, block_r), n_cb)

            def fwd():
                fa._geglu_fwd_kernel[grid](gate_up, h, mask, seed, n, i, n_cb, thr, scale, HAS_DROPOUT=True,
                                           BLOCK_R=block_r, BLOCK_C=fa._GEGLU_BLOCK_C, num_warps=warps)

            def bwd():
                fa._geglu_bwd_kernel[grid](dh, gate_up, mask, dgu, n, i, n_cb, scale, HAS_DROPOUT=True,
                                           BLOCK_R=block_r, BLOCK_C=fa._GEGLU_BLOCK_C, num_warps=warps)
            for name, fn in (("fwd", fwd), ("bwd", bwd)):
                try:
                    out[f"tile_{name}_r{block_r}_w{warps}_ms"] = triton.testing.do_bench(fn, warmup=25, rep=100,
                                                                                       return_mode="median")
                except Exception as e:  # noqa: BLE001 -- a configuration that does not compile is a result
                    out[f"tile_{name}_r{block_r}_w{warps}_ms"] = f"{type(e).__name__}"
    return out


def geglu_checks() -> list[dict]:
    """The GeGLU + dropout op on CUDA bf16 against float64 autograd (with its own mask), and its time against
    Inductor's fusion of the plain PyTorch expression at the training shape (fwd, fwd + bwd)."""
    op = getattr(torch.ops.mosaic_bert, fa._GEGLU_FWD_OP)
    out = []
    for n, i, p in ((1000, 3072, 0.1), (77, 1030, 0.0), (24576, 3072, 0.1)):
        x = (torch.randn(n, 2 * i, device="cuda") * 2).to(torch.bfloat16).requires_grad_(True)
        dh = torch.randn(n, i, device="cuda").to(torch.bfloat16)
        h, mask = op(x, torch.tensor([5], device="cuda"), p)
        h.backward(dh)
        x64 = x.detach().double().requires_grad_(True)
        g, u = x64.split(i, dim=-1)
        ref = torch.nn.functional.gelu(g) * u
        keep = fa.geglu_keep_mask(mask, n, i) if p > 0 else None
        if p > 0:
            ref = torch.where(keep, ref / (1 - p), 0.0)
        ref.backward(dh.double())
        e_h, e_g = rel(h, ref), rel(x.grad, x64.grad)
        frac = keep.float().mean().item() if p > 0 else 1.0
        ok = e_h < 1e-2 and e_g < 1e-2 and abs(frac - (1 - p)) < 0.01
        out.append(dict(check=f"geglu op bf16 {n}x{i} p={p} vs float64", loss=frac, loss_diff=e_h,
                        worst_grad_rel=e_g, ok=ok))
        print(json.dumps(out[-1]), flush=True)

    def plain(x, p):
        a, b = x.split(x.shape[1] // 2, dim=-1)
        return torch.nn.functional.dropout(torch.nn.functional.gelu(a) * b, p, True)

    compiled = torch.compile(plain)
    x = torch.randn(24576, 6144, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dh = torch.randn(24576, 3072, device="cuda", dtype=torch.bfloat16)
    times = {}
    for name, fn in (("op", lambda: fa.geglu_dropout(x, 0.1)), ("inductor", lambda: compiled(x, 0.1))):
        times[name + "_fwd_ms"] = triton.testing.do_bench(lambda: fn(), warmup=50, rep=200, return_mode="median")
        times[name + "_fwd_bwd_ms"] = triton.testing.do_bench(
            lambda: torch.autograd.grad(fn(), x, dh), warmup=50, rep=200, return_mode="median")
    # A/B of the draws alone: the same forward kernel with Philox draws (before the counter hash) and without dropout
    seed = torch.tensor([5], device="cuda")
    xd = x.detach()
    times["op_fwd_philox_ms"] = triton.testing.do_bench(lambda: philox_geglu_fwd(xd, seed, 0.1), warmup=50, rep=200,
                                                        return_mode="median")
    times["op_fwd_hash_ms"] = triton.testing.do_bench(lambda: fa._geglu_fwd_impl(xd, seed, 0.1), warmup=50, rep=200,
                                                      return_mode="median")
    times["op_fwd_no_dropout_ms"] = triton.testing.do_bench(lambda: fa._geglu_fwd_impl(xd, seed, 0.0), warmup=50,
                                                            rep=200, return_mode="median")
    times.update(geglu_tile_sweep(xd, dh, seed, 0.1))
    out.append(dict(check="geglu 24576x3072 p=0.1 times (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in times.items()),
                    loss=0.0, loss_diff=0.0, worst_grad_rel=0.0, ok=True, **times))
    print(json.dumps(out[-1]), flush=True)
    return out


def markdown(rows, checks_out, env) -> str:
    lines = [f"# Compiled MosaicBERT-base step: variants and profile ({env.get('gpu')})", "",
             f"torch {env['torch']}, triton {env['triton']}, commit {env.get('commit')}. Batches as in "
             "benchmark.py compare (seed 0, 3 batches); median of the timed steps (CUDA events).", "",
             "| case | variant | mode | token buckets | step ms | real tok/s | breaks | first / warmup s | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "step_ms" not in r:
            lines.append(f"| {r['case']} | {r['variant']} | {r['mode']} | | | | | | {r.get('error', '')} |")
            continue
        lines.append(f"| {r['case']} | {r['variant']} | {r['mode']} | {r['token_buckets']} | {r['step_ms']:.2f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['graph_breaks']} | {r['first_step_s']:.0f} / "
                     f"{r['warmup_s']:.0f} | {r.get('inductor') or ''} |")
    for r in rows:
        p = r.get("profile")
        if not p or "error" in p:
            continue
        lines += ["", f"## Profile: {r['case']} {r['variant']} (ms per step)", "",
                  f"window {p['window_ms']:.2f}, GPU busy {p['busy_ms']:.2f}, idle {p['idle_ms']:.2f}, "
                  f"{p['kernels_per_step']:.0f} kernels per step", "", "| category | ms |", "|---|---|"]
        lines += [f"| {c} | {v:.2f} |" for c, v in p["by_category_ms"].items()]
        lines += ["", "| kernel | ms | calls |", "|---|---|---|"]
        lines += [f"| `{k['name']}` | {k['ms']:.3f} | {k['calls']:.0f} |" for k in p["top"]]
    if checks_out:
        lines += ["", "## Checks", ""] + [f"- {c['check']}: loss {c['loss']:.4f}, |d loss| {c['loss_diff']:.2e}, "
                                          f"worst grad rel {c['worst_grad_rel']:.2e}: "
                                          f"{'PASS' if c['ok'] else 'FAIL'}" for c in checks_out]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/profile_step"))
    p.add_argument("--cases", default="train,infer")
    p.add_argument("--variants", default="bucketed,bucketed-cg")
    p.add_argument("--infer-variants", default=None, help="variants for the inference case (default: --variants)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--profile-variants", default="bucketed")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--who", default=None, help="regex: print which CPU ops launch the matching kernels (profile)")
    p.add_argument("--checks", action="store_true")
    p.add_argument("--geglu", action="store_true", help="only the GeGLU op's checks and timings of --checks")
    p.add_argument("--budget-s", type=float, default=420.0, help="no new variant starts after this many seconds")
    args = p.parse_args()
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))
    env = bm.environment("cuda")
    print(env, flush=True)
    t0 = time.perf_counter()
    checks_out = []
    if args.checks or args.geglu:
        try:
            checks_out = checks() if args.checks else geglu_checks()
        except Exception as e:  # noqa: BLE001 -- report it, time the variants anyway
            traceback.print_exc()
            checks_out = [dict(check=f"checks failed: {type(e).__name__}: {e}"[:300], loss=float("nan"),
                               loss_diff=float("nan"), worst_grad_rel=float("nan"), ok=False)]
    rows = []
    for cname in args.cases.split(","):
        case = CASES[cname]
        cpu_batches = bm.case_batches(case, 3, bm.BATCH_VOCAB, seed=0)
        names = args.variants if cname == "train" or not args.infer_variants else args.infer_variants
        for name in names.split(","):
            if time.perf_counter() - t0 > args.budget_s:
                rows.append(dict(case=case.name, variant=name, mode=None, error="budget spent"))
                continue
            rows.append(run_variant(case, name, cpu_batches, args))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile_step.json"), "w") as f:
        json.dump(dict(env=env, rows=rows, checks=checks_out), f, indent=1)
    md = markdown(rows, checks_out, env)
    with open(os.path.join(args.out, "profile_step.md"), "w") as f:
        f.write(md)
    print(md, flush=True)


if __name__ == "__main__":
    main()
