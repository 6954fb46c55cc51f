"""GPU checks of the attention custom op and of the compiled / exported model (one command, a few minutes on an H100).

    PYTHONPATH=$PWD python3 benchmarks/model_gpu_checks.py            # the checks (Triton autotuning off: numerics only)
    PYTHONPATH=$PWD python3 benchmarks/model_gpu_checks.py --bench    # also time eager vs compiled training steps

Checks, each printed as PASS/FAIL with its numbers:
  op_*       torch.ops.mosaic_bert.varlen_alibi_attn_fwd_v1/bwd_v1 on CUDA bf16 (the Triton kernels) against the same
             op's PyTorch math in float64: out, lse, dq, dk, dv; torch.library.opcheck on CUDA; the GeGLU + dropout
             op (geglu_dropout_fwd_v2/bwd_v2) against float64 with its own mask.
  compile_*  torch.compile(model, fullgraph=True) training step (bf16 autocast, attention_backend="triton") against
             eager: loss and every gradient; padded batch with MLM labels, padding-free batch, a second batch shape;
             padding-free inference has no graph break, and runs under CUDA graphs (mode="reduce-overhead").
  export_*   torch.export of a bf16 classifier and MLM model with dynamic batch/length, run on two shapes against eager.
Writes model_gpu_checks.json (and the printed log) to $OUT when set. Exit status 1 when a check fails.
"""

import argparse
import json
import math
import os
import sys
import time
import traceback

ARGS = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ARGS.add_argument("--bench", action="store_true", help="also time eager vs compiled training steps (base model)")
ARGS.add_argument("--only", default="", help="run only the checks whose name contains this")
args = ARGS.parse_args()
if not args.bench:
    os.environ.setdefault("MOSAIC_FA_TUNE", "0")  # one kernel config: these checks are about numerics

import torch  # noqa: E402

from mosaic_bert import BertConfig, BertForMaskedLM, BertForSequenceClassification  # noqa: E402
from mosaic_bert.modeling import flash_attn_triton as fa  # noqa: E402
from mosaic_bert.modeling.modeling_bert import alibi_slopes_list  # noqa: E402

DEV = "cuda"
RESULTS = []
LOG = []
CHECKS = []


def say(msg):
    print(msg, flush=True)
    LOG.append(msg)


def check(fn):
    CHECKS.append(fn)
    return fn


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def expect(ok, what):
    if not ok:
        raise AssertionError(what)


# ----------------------------------------------------------------------------------------------------------------------
# The op


def _op_case(lens, H, D, seed):
    g = torch.Generator().manual_seed(seed)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=DEV)
    qkv = torch.randn(sum(lens), 3, H, D, generator=g).to(DEV, torch.bfloat16)
    slopes = torch.tensor(alibi_slopes_list(H), dtype=torch.float32, device=DEV)
    dout = torch.randn(sum(lens), H, D, generator=g).to(DEV, torch.bfloat16)
    scale = 1.0 / math.sqrt(D)
    L = max(lens)
    op_fwd = getattr(torch.ops.mosaic_bert, fa._FWD_OP)
    out, lse = op_fwd(qkv, cu, L, slopes, scale)
    x = qkv.clone().requires_grad_(True)
    fa.varlen_attention(x, cu, L, slopes).backward(dout)
    q64 = qkv.double()
    ref_out, ref_lse = fa.reference_attn_fwd(q64, cu, L, slopes, scale)
    ref_dqkv = fa.reference_attn_bwd(dout.double(), q64, ref_out, ref_lse, cu, L, slopes, scale)
    errs = {"out": rel(out, ref_out), "lse_maxabs": (lse.double() - ref_lse.double()).abs().max().item()}
    for i, name in enumerate(("dq", "dk", "dv")):
        errs[name] = rel(x.grad[:, i], ref_dqkv[:, i])
    # a bound on the lengths larger than the longest sequence changes nothing
    out_loose, _ = op_fwd(qkv, cu, L + 100, slopes, scale)
    errs["loose_bound"] = rel(out_loose, out)
    return errs


@check
def op_triton_matches_pytorch_bf16():
    expect(fa._use_kernels(torch.empty(1, device=DEV, dtype=torch.bfloat16)), "the op would not use the kernels")
    worst = {}
    for lens, H, D, seed in (([128, 1, 77, 0, 128, 3], 12, 64, 0), ([512, 200, 1], 4, 32, 1),
                             ([1000, 513, 2048], 12, 64, 2), ([1, 17, 129], 3, 128, 3)):
        for k, v in _op_case(lens, H, D, seed).items():
            worst[k] = max(worst.get(k, 0.0), v)
    expect(all(worst[k] < 1e-2 for k in ("out", "dq", "dk", "dv")), f"relative errors over 1e-2: {worst}")
    expect(worst["lse_maxabs"] < 5e-2, f"lse differs: {worst['lse_maxabs']}")
    expect(worst["loose_bound"] < 1e-6, f"max_seqlen bound changed the output: {worst['loose_bound']}")
    return worst


@check
def op_opcheck_cuda():
    g = torch.Generator().manual_seed(5)
    lens = [40, 3, 0, 64]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=DEV)
    qkv = torch.randn(sum(lens), 3, 4, 64, generator=g).to(DEV, torch.bfloat16).requires_grad_(True)
    slopes = torch.tensor(alibi_slopes_list(4), device=DEV)
    result = torch.library.opcheck(getattr(torch.ops.mosaic_bert, fa._FWD_OP), (qkv, cu, 64, slopes, 0.125))
    expect(all(v == "SUCCESS" for v in result.values()), result)
    return result


@check
def op_geglu_dropout_matches_float64_bf16():
    """The GeGLU + dropout op (Triton kernels, packed mask) against float64 autograd with the op's own mask; the
    kept fraction is 1 - p; opcheck on CUDA."""
    op = getattr(torch.ops.mosaic_bert, fa._GEGLU_FWD_OP)
    worst = {}
    for n, i, p in ((1000, 3072, 0.1), (77, 1030, 0.0), (513, 64, 0.5)):
        g = torch.Generator().manual_seed(n)
        x = (torch.randn(n, 2 * i, generator=g) * 2).to(DEV, torch.bfloat16).requires_grad_(True)
        dh = torch.randn(n, i, generator=g).to(DEV, torch.bfloat16)
        h, mask = op(x, torch.tensor([n], device=DEV), p)
        h.backward(dh)
        x64 = x.detach().double().requires_grad_(True)
        gate, up = x64.split(i, dim=-1)
        ref = torch.nn.functional.gelu(gate) * up
        if p > 0:
            keep = fa.geglu_keep_mask(mask, n, i)
            ref = torch.where(keep, ref / (1 - p), 0.0)
            worst[f"kept_fraction_p{p}"] = keep.float().mean().item()
        ref.backward(dh.double())
        worst["h"] = max(worst.get("h", 0.0), rel(h, ref))
        worst["dgate_up"] = max(worst.get("dgate_up", 0.0), rel(x.grad, x64.grad))
    expect(worst["h"] < 1e-2 and worst["dgate_up"] < 1e-2, f"relative errors over 1e-2: {worst}")
    expect(abs(worst["kept_fraction_p0.1"] - 0.9) < 0.01 and abs(worst["kept_fraction_p0.5"] - 0.5) < 0.03, worst)
    x = torch.randn(64, 256, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    result = torch.library.opcheck(op, (x, torch.tensor([3], device=DEV), 0.2))
    expect(all(v == "SUCCESS" for v in result.values()), result)
    return worst


# ----------------------------------------------------------------------------------------------------------------------
# Compiled model


def _cfg(**kw):
    base = dict(num_hidden_layers=2, hidden_dropout_prob=0.0, attention_backend="triton")
    base.update(kw)
    return BertConfig(**base)


def _padded_batch(batch, max_len, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max_len // 2, max_len + 1, (batch,), generator=g)
    lengths[0] = max_len
    ids = torch.randint(5, vocab, (batch, max_len), generator=g)
    mask = (torch.arange(max_len)[None] < lengths[:, None]).long()
    ids = ids * mask
    labels = torch.where((torch.rand(batch, max_len, generator=g) < 0.3) & mask.bool(), ids, -100)
    return {k: v.to(DEV) for k, v in dict(input_ids=ids, attention_mask=mask, labels=labels).items()}


def _padding_free(b):
    real = b["attention_mask"].bool()
    lens = real.sum(1)
    cu = torch.cat([lens.new_zeros(1), lens.cumsum(0)]).to(torch.int32)
    max_len = int(lens.max())
    return dict(input_ids=b["input_ids"][real][None], labels=b["labels"][real][None], cu_seq_lens_q=cu,
                cu_seq_lens_k=cu, max_length_q=max_len, max_length_k=max_len)


def _step(model, batch):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(**batch)
    out.loss.backward()
    params = getattr(model, "_orig_mod", model).named_parameters()  # the same names for a compiled wrapper
    return out.loss.float().item(), {n: p.grad.float().clone() for n, p in params if p.grad is not None}


def _compare_steps(model, compiled, batch):
    loss_e, grads_e = _step(model, batch)
    loss_c, grads_c = _step(compiled, batch)
    expect(set(grads_c) == set(grads_e), "compiled step left some parameters without gradient")
    worst_name = max(grads_e, key=lambda n: rel(grads_c[n], grads_e[n]))
    worst = rel(grads_c[worst_name], grads_e[worst_name])
    expect(abs(loss_c - loss_e) < 2e-2, f"loss compiled {loss_c:.5f} vs eager {loss_e:.5f}")
    expect(worst < 5e-2, f"gradient {worst_name} rel err {worst:.3e}")
    qkv_grad = next(g for n, g in grads_c.items() if n.endswith("attention.self.Wqkv.weight"))
    expect(qkv_grad.abs().sum().item() > 0, "the attention op contributed no gradient in the compiled step")
    return dict(loss_eager=loss_e, loss_compiled=loss_c, worst_grad=worst_name, worst_grad_rel=worst)


@check
def compile_fullgraph_training_padded_and_padding_free():
    torch.manual_seed(0)
    cfg = _cfg()
    model = BertForMaskedLM(cfg).to(DEV).train()
    torch._dynamo.reset()
    res = {}
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        compiled = torch.compile(model, fullgraph=True)
        t = time.perf_counter()
        res["padded_32x128"] = _compare_steps(model, compiled, _padded_batch(32, 128, cfg.vocab_size, 0))
        res["padded_32x128_first_s"] = time.perf_counter() - t
        res["padded_16x200"] = _compare_steps(model, compiled, _padded_batch(16, 200, cfg.vocab_size, 1))
        res["padding_free_32x128"] = _compare_steps(model, compiled, _padding_free(_padded_batch(32, 128,
                                                                                                  cfg.vocab_size, 2)))
    return res


@check
def compile_padding_free_inference_has_no_graph_break():
    torch.manual_seed(0)
    model = BertForMaskedLM(_cfg()).to(DEV).eval()
    inputs = _padding_free(_padded_batch(16, 128, model.config.vocab_size, 3))
    inputs.pop("labels")
    torch._dynamo.reset()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        explain = torch._dynamo.explain(model)(**inputs)
        expect(explain.graph_break_count == 0, [b.reason for b in explain.break_reasons])
        compiled = torch.compile(model, fullgraph=True)
        got = compiled(**inputs).logits.float()
        want = model(**inputs).logits.float()
    err = rel(got, want)
    expect(err < 2e-2, f"compiled logits rel err {err:.3e}")
    return dict(graphs=explain.graph_count, logits_rel=err)


@check
def compile_reduce_overhead_padding_free_inference():
    """CUDA graphs (mode="reduce-overhead") over a padding-free batch of fixed size: numerics, and whether Inductor
    had to skip the graphs (cudagraph_skips > 0 means it ran without them; the detail says so, it is not a failure)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = BertForMaskedLM(_cfg(check_inputs=False)).to(DEV).eval()
    inputs = _padding_free(_padded_batch(16, 128, model.config.vocab_size, 6))
    inputs.pop("labels")
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):  # warm-up, record, replay
            got = compiled(**inputs).logits.float().clone()  # replays overwrite their outputs: keep a copy
        want = model(**inputs).logits.float()
    err = rel(got, want)
    expect(err < 2e-2, f"logits rel err {err:.3e}")
    return dict(logits_rel=err, cudagraph_skips=dict(counters["inductor"]).get("cudagraph_skips", 0))


# ----------------------------------------------------------------------------------------------------------------------
# Export


@check
def export_bf16_models_run_on_other_shapes():
    res = {}
    for cls in (BertForSequenceClassification, BertForMaskedLM):
        torch.manual_seed(0)
        model = cls(_cfg(num_labels=3)).to(DEV, torch.bfloat16).eval()
        b1 = _padded_batch(8, 64, model.config.vocab_size, 4)
        b2 = _padded_batch(5, 150, model.config.vocab_size, 5)
        batch_dim, len_dim = torch.export.Dim("batch", max=1024), torch.export.Dim("seqlen", min=2, max=4096)
        shapes = dict(input_ids={0: batch_dim, 1: len_dim}, attention_mask={0: batch_dim, 1: len_dim})
        program = torch.export.export(
            model, (), dict(input_ids=b1["input_ids"], attention_mask=b1["attention_mask"]), dynamic_shapes=shapes
        )
        expect(any(fa._FWD_OP in str(n.target) for n in program.graph.nodes), "the op is not in the exported graph")
        run = program.module()
        errs = []
        with torch.no_grad():
            for b in (b1, b2):
                kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                want, got = model(**kw).logits.float(), run(**kw).logits.float()
                expect(got.shape == want.shape, f"{cls.__name__}: shape {tuple(got.shape)} vs {tuple(want.shape)}")
                errs.append(rel(got, want))
        expect(max(errs) < 1e-2, f"{cls.__name__}: exported vs eager rel err {errs}")
        res[cls.__name__] = errs
    return res


# ----------------------------------------------------------------------------------------------------------------------
# Optional timing


def _time_steps(model, batch, steps=10, warmup=3):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def bench_training_steps():
    """MosaicBERT-base, 256 x 128 with ~25% padding: eager and compiled, padded and padding-free (real tok/s)."""
    res = {}
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(64, 129, (256,), generator=g)
    mask = (torch.arange(128)[None] < lengths[:, None]).long()
    ids = torch.randint(5, 30528, (256, 128), generator=g) * mask
    labels = torch.where((torch.rand(256, 128, generator=g) < 0.3) & mask.bool(), ids, -100)
    padded = {k: v.to(DEV) for k, v in dict(input_ids=ids, attention_mask=mask, labels=labels).items()}
    free = _padding_free(padded)
    n_tokens = int(mask.sum())
    for mode in ("eager", "compiled"):
        for layout, batch in (("padded", padded), ("padding_free", free)):
            torch.manual_seed(0)
            model = BertForMaskedLM(BertConfig(attention_backend="triton", check_inputs=False)).to(DEV).train()
            if mode == "compiled":
                torch._dynamo.reset()
                torch._dynamo.config.capture_dynamic_output_shape_ops = True
                model = torch.compile(model, fullgraph=True)
            sec = _time_steps(model, batch)
            res[f"{mode}_{layout}"] = dict(step_ms=sec * 1e3, real_tok_per_s=n_tokens / sec)
            say(f"  {mode:8s} {layout:12s} {sec * 1e3:7.1f} ms/step  {n_tokens / sec / 1e3:7.1f}k real tok/s")
            del model
            torch.cuda.empty_cache()
    return res


def main():
    if not torch.cuda.is_available():
        say("FAIL no CUDA device")
        return 1
    say(f"device {torch.cuda.get_device_name()}; torch {torch.__version__}; "
        f"triton {getattr(fa.triton, '__version__', None)}; MOSAIC_FA_TUNE={os.environ.get('MOSAIC_FA_TUNE', '1')}")
    checks = [c for c in CHECKS if args.only in c.__name__]
    if args.bench:
        checks.append(bench_training_steps)
    failed = 0
    for fn in checks:
        t = time.perf_counter()
        try:
            detail = fn()
            status = "PASS"
        except Exception as err:  # report every check, then fail the run
            detail = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"
            status = "FAIL"
            failed += 1
        secs = time.perf_counter() - t
        say(f"{status} {fn.__name__} ({secs:.1f}s): {json.dumps(detail, default=str) if status == 'PASS' else detail}")
        RESULTS.append(dict(check=fn.__name__, status=status, seconds=secs, detail=detail))
    say(f"{len(checks) - failed} passed, {failed} failed")
    out = os.environ.get("OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "model_gpu_checks.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)
        with open(os.path.join(out, "model_gpu_checks.log"), "w") as f:
            f.write("\n".join(LOG) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
