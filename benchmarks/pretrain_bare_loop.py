#!/usr/bin/env python
"""Bare training loop for comparison with scripts/pretrain.py: same model config, optimizer, precision, microbatch
and accumulation, but random token ids already on the GPU (no data loader, no Accelerate, no masking, no logging).
Attention masks follow the real run's row-length distribution so both loops do the same model work.

  python benchmarks/pretrain_bare_loop.py --run RUN_DIR --lengths CACHE/train_lengths.npy --steps 300 \
      --microbatch 256 --accum 4 --out bare.json
Also summarises the real run (steady-state windows of RUN_DIR/metrics.jsonl) and writes the comparison.
"""
import argparse
import json
import os
import time

import numpy as np
import torch

from mosaic_bert import BertConfig, BertForMaskedLM
from mosaic_bert.train.optim import build_optimizer
from mosaic_bert.train.flops import model_flop_params, peak_flops, step_flops
from mosaic_bert.train.model import MosaicBertFamily
from mosaic_bert.train.runtime import keep_grads_allocated, mark_dynamic_inputs


def steady_state(metrics_path, skip_windows=3):
    recs = [json.loads(line) for line in open(metrics_path) if line.strip()]
    tr = [r for r in recs if "tokens_per_s" in r]
    tr = tr[skip_windows:] if len(tr) > skip_windows + 2 else tr
    ev = [r for r in recs if "eval_loss" in r]
    med = lambda k: float(np.median([r[k] for r in tr])) if tr and k in tr[0] else None
    return {"windows": len(tr), "tokens_per_s": med("tokens_per_s"), "samples_per_s": med("samples_per_s"),
            "tflops_per_s": med("tflops_per_s"), "mfu": med("mfu"), "first_eval": ev[0] if ev else None,
            "last_eval": ev[-1] if ev else None, "final_train_loss": tr[-1]["loss"] if tr else None,
            "data_wait_frac": med("data_wait_frac")}


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="output_dir of the real run (config.json, metrics.jsonl)")
    ap.add_argument("--lengths", required=True, help="train_lengths.npy of the run's tokenized cache")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--microbatch", type=int, default=256)
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--mlm", type=float, default=0.3)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-seconds", type=float, default=0.0,
                    help="stop the timed steps after this many seconds (0: run --steps); a run cut by a call's time "
                         "limit then still reports the steps it timed")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="torch.compile with the unpadding precomputed (bucketed), as the pretraining script does on CUDA")
    ap.add_argument("--mode", default=None, choices=[None, "reduce-overhead"],
                    help="torch.compile mode; reduce-overhead (CUDA graphs) marks each microbatch a new step and keeps "
                         "the gradients allocated (accumulated in place: a graph output is never installed as .grad)")
    return ap.parse_args()


def synthetic_batches(a, vocab_size, dev, n=8):
    """Random ids on the device, with rows as long as the real run's (sampled from its length distribution); each
    with (tokens, sum of squared lengths, masked positions) for the FLOP count."""
    lengths = np.load(a.lengths)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(n):
        lens = torch.from_numpy(rng.choice(lengths, a.microbatch)).to(dev)
        width = int(lens.max())
        am = (torch.arange(width, device=dev)[None, :] < lens[:, None]).long()
        ids = torch.randint(5, vocab_size, (a.microbatch, width), device=dev) * am
        sel = (torch.rand(a.microbatch, width, device=dev) < a.mlm) & am.bool()
        labels = torch.where(sel, ids, torch.full_like(ids, -100))
        lens_c = lens.long().cpu()
        layout = {}
        if a.compile:  # what the pretraining loader adds on the fast path, moved to the device like a batch
            layout = {k: v.to(dev) if torch.is_tensor(v) else v
                      for k, v in MosaicBertFamily.sync_free_layout({"attention_mask": am.cpu(), "labels": labels.cpu()}).items()}
            mark_dynamic_inputs(layout, MosaicBertFamily.dynamic_inputs)   # as the trainer: one graph for all buckets
        batches.append((ids, am, labels, int(am.sum()), int((lens_c * lens_c).sum()), int(sel.sum()), layout))
    return batches


def bare_loop(a, cfg, dev) -> dict:
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = BertForMaskedLM(cfg).to(dev).train()
    opt = build_optimizer(model, 5e-4, (0.9, 0.98), 1e-6, 1e-5)
    forward = torch.compile(model, mode=a.mode) if a.compile else model
    graphs = a.compile and a.mode == "reduce-overhead"
    if graphs:
        keep_grads_allocated(model)
    batches = synthetic_batches(a, cfg.vocab_size, dev)
    n_params, hidden, vocab = model_flop_params(model)

    def step(i):
        for j in range(a.accum):
            ids, am, labels, *_, layout = batches[(i * a.accum + j) % len(batches)]
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                out = forward(input_ids=ids, attention_mask=am, labels=labels, **layout)
            (out.loss / a.accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        opt.zero_grad(set_to_none=not graphs)
        return out.loss

    for i in range(a.warmup_steps):
        step(i)
    sync()
    t0 = time.perf_counter()
    tokens = flops = samples = done = 0
    for i in range(a.steps):
        if a.max_seconds and done and time.perf_counter() - t0 > a.max_seconds:
            break
        loss = step(i)
        done += 1
        for j in range(a.accum):
            b = batches[(i * a.accum + j) % len(batches)]
            tokens, samples = tokens + b[3], samples + a.microbatch
            flops += step_flops(n_params, hidden, vocab, cfg.num_hidden_layers, b[3], b[4], b[5])
    loss.item()
    sync()
    dt = time.perf_counter() - t0
    peak = peak_flops(dev)
    return {"steps": done, "seconds": dt, "tokens_per_s": tokens / dt, "samples_per_s": samples / dt,
            "tflops_per_s": flops / dt / 1e12, "mfu": (flops / dt / peak) if peak else None,
            "max_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None,
            "microbatch": a.microbatch, "accum": a.accum, "compiled": a.compile, "mode": a.mode, "attention_backend": getattr(cfg, "attention_backend", None)}


def main():
    a = parse_args()
    dev = torch.device(a.device)
    bare = bare_loop(a, BertConfig.from_pretrained(a.run), dev)
    real = steady_state(os.path.join(a.run, "metrics.jsonl"))
    res = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "bare_loop": bare, "pretrain_script": real,
           "data_path_overhead": (1 - real["samples_per_s"] / bare["samples_per_s"]) if real["samples_per_s"] else None}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
