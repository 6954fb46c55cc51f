"""CPU benchmark of the data path (issue 11): conversion throughput at 1 vs N processes, time to the first step and
peak RSS from a converted folder, and the loader's samples/s against one H100's consumption.

Inputs: C4-layout shards (``c4-train.NNNNN-of-MMMMM.json.gz``, one {"text", "timestamp", "url"} object per line) cut
from the Wikipedia corpus (``--wiki``, blank-line-separated articles): each article is split into documents of about
2,000 characters at paragraph boundaries (C4's pages average ~2,200), repeated until the size is reached, ~25 MB of
text per shard (or ``--shards`` per size), written by ``--make-procs`` processes. Conversion runs the real CLI
(scripts/prepare_data.py) in a subprocess, watched with psutil.

  python benchmarks/data_bench.py --sizes 100 --procs 1,2                 # ~2 min on 2 cores
  python benchmarks/data_bench.py --sizes 100,1000 --procs 1,2 --big-procs 2 --out benchmarks/results/data_cpu.json
  python benchmarks/data_bench.py --report DIR      # DIR: what benchmarks/data_gpu_e2e.sh returned ->
                                                    # benchmarks/results/data_gpu_e2e.md and .json
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
H100_SAMPLES_PER_S = 4400      # one H100 at the paper's recipe (seq 128): see benchmarks/results/pretrain_fast_run
DOC_CHARS = 2000
SHARD_MB = 25


def _wiki_documents(path: str):
    """C4-sized documents: each article's paragraphs grouped into ~DOC_CHARS pieces."""
    with lzma.open(path, "rt", encoding="utf-8") as f:
        text = f.read()
    for article in text.split("\n\n"):
        doc = []
        for par in article.split("\n"):
            par = par.strip()
            if par:
                doc.append(par)
                if sum(map(len, doc)) >= DOC_CHARS:
                    yield "\n".join(doc)
                    doc = []
        if doc:
            yield "\n".join(doc)


_DOCS: list = []    # the parent's documents, inherited by the forked shard writers (no copy, no pickling)


def _write_shard(job: tuple) -> tuple[int, int]:
    """Shard ``s``: documents from ``start`` on (wrapping) until ``nbytes`` bytes of text; (documents, bytes)."""
    path, s, start, nbytes = job
    size, j = 0, 0
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:   # level 1: the writer, not gzip, is timed
        while size < nbytes:
            k = start + j
            d, rep = _DOCS[k % len(_DOCS)], k // len(_DOCS)
            text = f"{s}.{rep} {d}" if (s, rep) != (0, 0) else d   # shard and repeat first: no two documents are equal
            f.write(json.dumps({"text": text, "timestamp": "2019-04-25T12:00:00Z", "url": f"https://w/{s}/{j}"}) + "\n")
            size += len(text.encode())
            j += 1
    return j, size


def make_inputs(wiki: str, size_mb: int, root: Path, shard_mb: int = SHARD_MB, procs: int = 1,
                shards: int | None = None) -> tuple[Path, int, int]:
    """(folder, documents, bytes of text) of C4-layout json.gz shards holding ``size_mb`` MB of text; reused.
    ``shards`` (default size / shard_mb) sets the count, so a small input still gives every conversion process work;
    ``procs`` processes write one shard each at a time (a 4 GB input takes minutes on one core)."""
    global _DOCS
    n_shards = shards or max(1, size_mb // shard_mb)
    folder = root / f"c4like-{size_mb}MB-{n_shards}shards"
    info = folder / "info.json"
    if info.exists():
        i = json.loads(info.read_text())
        return folder, i["documents"], i["bytes"]
    folder.mkdir(parents=True, exist_ok=True)
    _DOCS = list(_wiki_documents(wiki))
    per_shard = size_mb * 10**6 // n_shards
    # shard s starts s/n of the way into the articles: a small input of many shards still spans the whole corpus
    jobs = [(folder / f"c4-train.{s:05d}-of-{n_shards:05d}.json.gz", s, s * len(_DOCS) // n_shards, per_shard)
            for s in range(n_shards)]
    if procs > 1:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            done = pool.map(_write_shard, jobs, chunksize=1)
    else:
        done = [_write_shard(j) for j in jobs]
    docs, written = sum(d for d, _ in done), sum(b for _, b in done)
    info.write_text(json.dumps({"documents": docs, "bytes": written, "shards": n_shards}))
    return folder, docs, written


def _watch(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; wall time, CPU seconds and peak RSS (whole process tree and largest single process)."""
    t0 = time.perf_counter()
    p = psutil.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_tree = peak_one = 0
    cpu: dict = {}
    while p.poll() is None:
        try:
            procs = [p] + p.children(recursive=True)
            rss = []
            for q in procs:
                with q.oneshot():
                    rss.append(q.memory_info().rss)
                    t = q.cpu_times()
                    cpu[q.pid] = t.user + t.system
            peak_tree, peak_one = max(peak_tree, sum(rss)), max(peak_one, max(rss))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        time.sleep(0.1)
    out = p.stdout.read()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({p.returncode}):\n{out[-3000:]}")
    return {"wall_s": round(wall, 2), "cpu_s_sampled": round(sum(cpu.values()), 1),
            "peak_rss_tree_mb": round(peak_tree / 2**20), "peak_rss_one_process_mb": round(peak_one / 2**20),
            "log_tail": out.strip().splitlines()[-1][:300]}


def convert_run(inputs: Path, out: Path, tokenizer: str, procs: int, mode: str) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "scripts" / "prepare_data.py"), str(inputs / "*.json.gz"), "--out", str(out),
           "--tokenizer", tokenizer, "--seq-len", "128", "--mode", mode, "--num-proc", str(procs)]
    r = _watch(cmd, env)
    m = json.loads((out / "manifest.json").read_text())
    tokens = m["train"]["tokens"] + m["valid"]["tokens"]
    r.update(mode=mode, procs=procs, documents=m["documents_read"], rows=m["train"]["rows"] + m["valid"]["rows"],
             tokens=tokens, shards=len(m["train"]["shards"]), tokens_per_s=round(tokens / r["wall_s"]),
             tokens_per_s_per_core=round(tokens / r["wall_s"] / procs))
    return r


FIRST_STEP = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np, torch
from transformers import AutoTokenizer
from mosaic_bert.train.data import BatchPlan, TokenizedSplit, TrainLoader, TrainMicrobatches
from mosaic_bert.train.masking import MLMMasker
torch.set_num_threads(1)
import psutil
proc = psutil.Process()
mem = lambda: (proc.memory_info().rss / 2**20, (proc.memory_info().rss - proc.memory_info().shared) / 2**20)
t_import = time.perf_counter()
rss_import = mem()   # (ru_maxrss is no use here: Linux carries the parent's peak across exec)
folder, seconds, workers = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(folder + "/tokenizer")
split = TokenizedSplit(folder, "train")
masker = MLMMasker.from_tokenizer(tok, 0.30, 17)
plan = BatchPlan(seed=17, global_batch=4096, microbatch=128, accum=4, num_processes=8, rank=0)   # the paper, rank 0 of 8
_, micro = next(iter(TrainLoader(split, masker, plan, total_steps=10)))
t_first = time.perf_counter()
rss_first = mem()
ds = TrainMicrobatches(split, masker, BatchPlan(17, 128, 128), 1000, 10**9)
n = 0
t = time.perf_counter()
while time.perf_counter() - t < seconds:
    ds[n]; n += 1
one_core = n * 128 / (time.perf_counter() - t)
it = iter(TrainLoader(split, masker, BatchPlan(17, 128, 128), total_steps=10**9, num_workers=workers))
for _ in range(20): next(it)
t, k = time.perf_counter(), 0
while time.perf_counter() - t < seconds:
    next(it); k += 1
with_workers = k * 128 / (time.perf_counter() - t)
print(json.dumps({"rows": len(split), "import_s": round(t_import - t0, 2), "first_step_s_after_imports": round(t_first - t_import, 3),
                  "first_step_microbatches": len(micro), "rss_after_imports_mb": round(rss_import[0]),
                  "rss_after_first_step_mb": round(rss_first[0]), "anon_rss_after_imports_mb": round(rss_import[1]),
                  "anon_rss_after_first_step_mb": round(rss_first[1]), "mapped_shards_first_step": split.mapped_shards,
                  "loader_samples_per_s_one_core": round(one_core), "loader_workers": workers,
                  "loader_samples_per_s_workers": round(with_workers)}))
"""


def first_step(folder: Path, seconds: float = 10, workers: int = 2) -> dict:
    """Imports, the first step of rank 0 of 8 at the paper's batch, RSS; then ``seconds`` of loader throughput on one
    core and through ``workers`` DataLoader workers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", FIRST_STEP, str(folder), str(seconds), str(workers)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["loader_vs_one_h100"] = round(r["loader_samples_per_s_one_core"] / H100_SAMPLES_PER_S, 2)
    return r


def render_tables(res: dict) -> list[str]:
    """The conversion and first-step tables of a results dict (one row per case)."""
    rows = ["| input | mode | procs | documents | tokens kept | inputs made s | wall s | CPU s | tokens / CPU-s | "
            "tokens/s per process | docs / CPU-s | peak RSS tree / one process MB | load avg (1 min) before / after |",
            "|" + "---|" * 13]
    for c in res["cases"]:
        cpu = c["cpu_s_sampled"]
        rows.append(f"| {c['size_mb']} MB, {c['shards']} shards | {c['mode']} | {c['procs']} | {c['documents']:,} | "
                    f"{c['tokens']:,} | {c.get('inputs_s', '')} | {c['wall_s']} | {cpu} | {c['tokens'] / cpu:,.0f} | "
                    f"{c['tokens_per_s_per_core']:,} | {c['documents'] / cpu:,.0f} | "
                    f"{c['peak_rss_tree_mb']} / {c['peak_rss_one_process_mb']} | {c['loadavg_1min_before']} / "
                    f"{c['loadavg_1min_after']} |")
    first = ["| input | rows | imports s | first step s (after imports) | RSS after imports / after first step MB "
             "(anonymous) | shards mapped | loader samples/s, 1 core | DataLoader workers: samples/s | "
             "1 core / one H100 (4,400/s) | conversion + first step s |", "|" + "---|" * 10]
    for c in res["cases"]:
        f = c.get("first_step")
        if f:
            workers = f.get("loader_workers", 2)     # data_cpu.json (before the option) ran 2
            w_rate = f.get("loader_samples_per_s_workers", f.get("loader_samples_per_s_2_workers"))
            first.append(f"| {c['size_mb']} MB | {f['rows']:,} | {f['import_s']} | {f['first_step_s_after_imports']} | "
                         f"{f['rss_after_imports_mb']} / {f['rss_after_first_step_mb']} ({f['anon_rss_after_imports_mb']}"
                         f" / {f['anon_rss_after_first_step_mb']}) | "
                         f"{f['mapped_shards_first_step']} | {f['loader_samples_per_s_one_core']:,} | "
                         f"{workers}: {w_rate:,} | {f['loader_vs_one_h100']}x | {c['time_to_first_step_s']} |")
    return ["## Conversion (scripts/prepare_data.py)", "", *rows, "",
            "## Time to first step, RSS, loader throughput (from the converted folder)", "", *first, ""]


PART = re.compile(r"^\[part\] (\S+) (rc=\S+|skipped)(.*)$")


def gpu_report(folder: Path) -> tuple[str, dict]:
    """(markdown, json) of one benchmarks/data_gpu_e2e.sh call from the files it returned in ``folder``: its log
    (device, per-part wall times), data_bench.json (the conversion rows) and data_gpu_e2e_bare.json (the paper's recipe
    against the bare compiled step)."""
    log = (folder / "data_gpu_e2e.log").read_text(errors="replace").splitlines()
    head = [line for line in log[:12] if line.startswith(("NVIDIA", "torch", "cores", "commit"))]
    parts = []
    for line in log:
        m = PART.match(line)
        if m:
            parts.append({"part": m.group(1), "status": m.group(2), "detail": m.group(3).strip()})
    bench_f = folder / "data_bench.json"
    bench = json.loads(bench_f.read_text()) if bench_f.exists() else {"cases": []}
    # one bare-loop comparison per microbatch (data_gpu_e2e_bare_mbM.json; data_gpu_e2e_bare.json before MBS)
    bares = [json.loads(f.read_text()) for f in sorted(folder.glob("data_gpu_e2e_bare*.json"),
                                                        key=lambda f: int(re.sub(r"\D", "", f.stem) or 0))]
    md = ["# Data path at scale on one H100 machine (issue 11, benchmarks/data_gpu_e2e.sh)", "", *[f"    {h}" for h in head],
          "", "## Parts of the call (wall s; a part past its limit or the call's budget is cut, the rest survive)", "",
          "| part | status | detail |", "|---|---|---|", *[f"| {p['part']} | {p['status']} | {p['detail']} |" for p in parts],
          ""]
    if bares:
        pct = lambda x: "n/a" if x is None else f"{100 * x:.1f} %"      # (no MFU off CUDA)
        md += ["## The paper's recipe on the converted folder vs the bare compiled step", "",
               "| microbatch x accumulation | scripts/pretrain.py tokens/s | bare loop tokens/s | data-path cost | "
               "MFU script / bare | waiting for data | held-out MLM loss | steady windows |",
               "|---|---|---|---|---|---|---|---|"]
        for bare in bares:
            s, b, o = bare["pretrain_script"], bare["bare_loop"], bare["data_path_overhead"]
            verdict = "within 5 %" if abs(o) <= 0.05 else "NOT within 5 %"
            ev0, ev1 = s.get("first_eval") or {}, s.get("last_eval") or {}
            md.append(f"| {b['microbatch']} x {b['accum']} | {s['tokens_per_s']:,.0f} | {b['tokens_per_s']:,.0f} | "
                      f"{100 * o:.1f} % ({verdict}) | {pct(s['mfu'])} / {pct(b['mfu'])} | "
                      f"{pct(s.get('data_wait_frac'))} | {ev0.get('eval_loss', float('nan')):.3f} -> "
                      f"{ev1.get('eval_loss', float('nan')):.3f} (step {ev1.get('step')}) | {s['windows']} |")
        md.append("")
    else:
        md += ["## The paper's recipe vs the bare step: no data_gpu_e2e_bare*.json came back (see the parts table)", ""]
    md += render_tables(bench)
    return "\n".join(md), {"header": head, "parts": parts, "bench": bench, "e2e": bares}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wiki", default=str(ROOT.parent / "shared" / "data" / "wikipedia" / "train.txt.xz"))
    ap.add_argument("--tokenizer", default=str(ROOT / "tests" / "fixtures" / "bert-base-uncased"))
    ap.add_argument("--sizes", default="100", help="MB of text, comma list")
    ap.add_argument("--shards", default=None, help="input shards per size, comma list (default: 25 MB each)")
    ap.add_argument("--procs", default="1,2", help="conversion processes compared on the first size")
    ap.add_argument("--big-procs", type=int, default=2, help="processes for the other sizes")
    ap.add_argument("--make-procs", type=int, default=1, help="processes writing the input shards")
    ap.add_argument("--chunk", action="store_true", help="also convert the first size in chunk mode (all tokens)")
    ap.add_argument("--no-first-step", action="store_true", help="conversion rows only")
    ap.add_argument("--loader-seconds", type=float, default=10, help="each loader throughput window")
    ap.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers of the second window")
    ap.add_argument("--work", default="/tmp/mosaic_bert_data_bench")
    ap.add_argument("--out", default=None, help="JSON results file")
    ap.add_argument("--append", action="store_true", help="add the cases to --out's (one file across calls)")
    ap.add_argument("--report", default=None, metavar="DIR",
                    help="no benchmark: DIR holds what benchmarks/data_gpu_e2e.sh returned; writes --md and its .json")
    ap.add_argument("--md", default=str(ROOT / "benchmarks" / "results" / "data_gpu_e2e.md"))
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    if a.report:
        md, js = gpu_report(Path(a.report))
        Path(a.md).write_text(md)
        Path(a.md).with_suffix(".json").write_text(json.dumps(js, indent=1) + "\n")
        print(md)
        return
    work = Path(a.work)
    res = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}, "h100_samples_per_s": H100_SAMPLES_PER_S,
           "cases": []}
    if a.append and a.out and Path(a.out).exists():
        res = json.loads(Path(a.out).read_text())
    sizes = [int(s) for s in a.sizes.split(",")]
    shards = [int(s) for s in a.shards.split(",")] if a.shards else [None] * len(sizes)
    for n, (size, n_shards) in enumerate(zip(sizes, shards)):
        t = time.perf_counter()
        inputs, docs, nbytes = make_inputs(a.wiki, size, work / "inputs", procs=a.make_procs, shards=n_shards)
        inputs_s = round(time.perf_counter() - t, 1)
        print(f"[bench] inputs {size} MB: {docs:,} documents, {nbytes / 1e6:.0f} MB of text in {inputs.name} "
              f"({inputs_s} s, {a.make_procs} processes; 0 when reused)", flush=True)
        runs = [(p, "truncate") for p in ([int(x) for x in a.procs.split(",")] if n == 0 else [a.big_procs])]
        if n == 0 and a.chunk:
            runs.append((max(int(x) for x in a.procs.split(",")), "chunk"))
        for procs, mode in runs:
            out = work / f"out-{size}MB-{mode}-p{procs}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            load0 = os.getloadavg()[0]
            r = convert_run(inputs, out, a.tokenizer, procs, mode)
            r.update(size_mb=size, text_bytes=nbytes, inputs_s=inputs_s, input_procs=a.make_procs,
                     loadavg_1min_before=round(load0, 2), loadavg_1min_after=round(os.getloadavg()[0], 2))
            print(f"[bench] converted {size} MB with {procs} processes: {r['wall_s']} s, {r['tokens_per_s_per_core']:,} "
                  f"tokens/s per process, peak RSS {r['peak_rss_tree_mb']} / {r['peak_rss_one_process_mb']} MB", flush=True)
            if mode == "truncate" and procs == runs[-1][0] and not a.no_first_step:   # (len(runs) == 1 is a case of it)
                r["first_step"] = first_step(out, a.loader_seconds, a.loader_workers)
                r["time_to_first_step_s"] = round(r["wall_s"] + r["first_step"]["import_s"] +
                                                  r["first_step"]["first_step_s_after_imports"], 1)
            print("[bench]", json.dumps(r), flush=True)
            res["cases"].append(r)
            if a.out:
                Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    res["machine"]["loadavg_end"] = os.getloadavg()
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
