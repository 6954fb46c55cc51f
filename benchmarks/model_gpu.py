"""Training-step throughput of MosaicBERT-base (Triton and SDPA attention) against transformers' BertForMaskedLM.

One step = forward + backward + fused AdamW under bf16 autocast, batch 256 x 128 tokens. Two fills: every row full
(C4-like: most documents exceed 128 tokens) and ~60% real tokens (short documents). tokens/s counts real tokens.
MFU uses the same FLOP count for every model: 6 x (parameters outside the embeddings) x real tokens plus attention
(12 x layers x hidden x seqlen per token), over 989 TFLOP/s (H100 SXM dense bf16).

    python benchmarks/model_gpu.py --out DIR
"""

import argparse
import json
import time
from pathlib import Path

import torch
import transformers

from mosaic_bert import BertConfig, BertForMaskedLM

PEAK = 989e12


def make_batch(batch, seqlen, fill, vocab, mask_prob, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    if fill >= 1.0:
        lengths = torch.full((batch,), seqlen)
    else:
        lengths = torch.randint(int(seqlen * (2 * fill - 1)), seqlen + 1, (batch,), generator=g).clamp(8, seqlen)
    mask = (torch.arange(seqlen)[None] < lengths[:, None]).long()
    ids = torch.randint(1000, vocab - 100, (batch, seqlen), generator=g) * mask
    labels = torch.where((torch.rand(batch, seqlen, generator=g) < mask_prob) & mask.bool(), ids, -100)
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=mask, labels=labels).items()}


def flops_per_step(model, n_tokens, seqlen, cfg):
    dense = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    return 6 * dense * n_tokens + 12 * cfg.num_hidden_layers * cfg.hidden_size * seqlen * n_tokens


def bench(model, batch, steps=20, warmup=5):
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seqlen", type=int, default=128)
    args = ap.parse_args()
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
            batch = make_batch(args.batch, args.seqlen, fill, cfg.vocab_size, mask_prob, dev)
            n_tokens = int(batch["attention_mask"].sum())
            try:
                sec = bench(model, batch)
                tps = n_tokens / sec
                mfu = flops_per_step(model, n_tokens, args.seqlen, cfg) / sec / PEAK
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
        "Hidden dropout 0.1 everywhere. `eager-geglu`: MosaicBERT with config.fused_geglu=False.",
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
    (out / "model_step_h100.md").write_text("\n".join(lines) + "\n")
    (out / "model_step_h100.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
