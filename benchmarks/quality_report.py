"""Turn the logs of benchmarks/quality_gpu.sh into benchmarks/results/quality_h100.{json,md,png}.

    python benchmarks/quality_report.py benchmarks/results/quality_run2 benchmarks/results/quality

The first folder is the measured pair: its final runs give the curves, and GLUE is of its checkpoints. Any further
folders add their runs to the table (the sweep, earlier finals as replicates); their GLUE is not used.

GPU-seconds are the trainer's `train_seconds` at each held-out evaluation: training steps only (evaluation and
checkpoint pauses left out), the first window's compilation included.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_run(path: Path) -> dict:
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [r for r in recs if "eval_loss" in r]
    windows = [r for r in recs if "tokens_per_s" in r]
    steady = sorted(r["tokens_per_s"] for r in windows[3:]) or [0.0]
    return {"curve": [[round(r["train_seconds"], 1), round(r["eval_loss"], 4)] for r in evals],
            "accuracy": [[round(r["train_seconds"], 1), round(r["eval_accuracy"], 4)] for r in evals],
            "steps": evals[-1]["step"], "tokens_per_s_median": round(steady[len(steady) // 2]),
            "first_window_s": round(evals[1]["train_seconds"], 1) if len(evals) > 1 else None}


def first_time_below(curve: list, target: float):
    """The first evaluation time at which the held-out loss is at or below `target` (None if never)."""
    return next((t for t, loss in curve if loss <= target), None)


def loss_at(curve: list, seconds: float) -> float:
    """Held-out loss at `seconds`, linear between evaluation points (the last point beyond the curve)."""
    for (t0, l0), (t1, l1) in zip(curve, curve[1:]):
        if t0 <= seconds <= t1:
            return l0 + (l1 - l0) * (seconds - t0) / (t1 - t0)
    return curve[-1][1]


def glue_tasks(folder: Path, fam: str) -> dict:
    """Every task of `fam` in `folder`: one results file per task (glue_<fam>_<task>_results.json, the parallel
    phase) or one for all (glue_<fam>_results.json)."""
    tasks = {}
    for path in sorted(folder.glob(f"glue_{fam}_*results.json")):
        tasks.update(json.loads(path.read_text())["tasks"])
    return tasks


def glue_scores(tasks: dict, key: str = "final") -> dict:
    return {name: round(t[key], 2) for name, t in tasks.items() if t.get(key) is not None}


def read_runs(folder: Path) -> dict:
    return {p.name.removesuffix("_metrics.jsonl"): read_run(p) for p in sorted(folder.glob("*_metrics.jsonl"))
            if not p.name.startswith("prep_")}


def main(folder: str, *earlier: str):
    d = Path(folder)
    runs = read_runs(d)
    final = {fam: next(v for k, v in runs.items() if k.startswith(f"final_{fam}_")) for fam in ("mosaic", "hf")}
    for e in earlier:
        runs.update({f"{Path(e).name}/{k}": v for k, v in read_runs(Path(e)).items()})
    glue = {fam: glue_tasks(d, fam) for fam in ("mosaic", "hf")}
    hf_final_loss, hf_time = final["hf"]["curve"][-1][1], final["hf"]["curve"][-1][0]
    result = {
        "device": "NVIDIA H100 80GB HBM3", "software": "torch 2.11.0+cu130, transformers 5.17.0, triton 3.6.0",
        "setup": "Wikipedia (../shared/data/wikipedia train.txt, 8,494 articles, 29.2M tokens) chunked to 128 tokens; "
                 "held-out = valid.txt (173 articles, 2,856 rows), 4,096 rows scored with the same 15 % masks for both; "
                 "global batch 256, bf16 autocast, torch.compile, decoupled AdamW, linear warmup/decay to 0.02",
        "pretrain": {fam: r["curve"] for fam, r in final.items()},
        "pretrain_accuracy": {fam: r["accuracy"] for fam, r in final.items()},
        "runs": runs,
        "baseline_final_loss": hf_final_loss,
        "seconds_to_baseline_final_loss": {fam: first_time_below(r["curve"], hf_final_loss) for fam, r in final.items()},
        "mosaic_loss_at_baseline_time": round(loss_at(final["mosaic"]["curve"], hf_time), 4),
        "glue": {fam: glue_scores(glue[fam]) for fam in ("mosaic", "hf")},
        "glue_best_epoch": {fam: glue_scores(glue[fam], "best_epoch") for fam in ("mosaic", "hf")},
        "glue_setup": {fam: {name: {"start": t.get("start"), "epochs_run": t.get("epochs_run"), "seeds": t.get("seeds"),
                                    "recipe": t.get("recipe")} for name, t in glue[fam].items()} for fam in ("mosaic", "hf")},
    }
    out = d.parent / "quality_h100.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| run | steps | tokens/s (median) | GPU-s at end | held-out loss at end |", "|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['steps']} | {r['tokens_per_s_median']:,} | {r['curve'][-1][0]} | {r['curve'][-1][1]} |")
    names = sorted(set(result["glue"]["mosaic"]) | set(result["glue"]["hf"]))
    if names:
        lines += ["", "GLUE dev (final epoch; best epoch in brackets), one seed:", "",
                  "| model | " + " | ".join(names) + " | mean |", "|---|" + "---|" * (len(names) + 1)]
        for fam, label in (("mosaic", "MosaicBERT-base (ours)"), ("hf", "HF BERT-base")):
            sc, best = result["glue"][fam], result["glue_best_epoch"][fam]
            cells = [f"{sc[n]:.1f} ({best[n]:.1f})" if n in sc else "–" for n in names]
            mean = f"{sum(sc.values()) / len(sc):.1f}" if len(sc) == len(names) else "–"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean} |")
    (d.parent / "quality_h100.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for fam, label in (("mosaic", "MosaicBERT-base (ours)"), ("hf", "HF BERT-base")):
            xs, ys = zip(*final[fam]["curve"])
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xlabel("training GPU-seconds (one H100)")
        ax.set_ylabel("held-out MLM loss (same 15 % masks)")
        ax.set_ylim(top=8)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(d.parent / "quality_h100.png", dpi=120)
    except ImportError:
        pass
    print(json.dumps({k: result[k] for k in ("baseline_final_loss", "seconds_to_baseline_final_loss",
                                              "mosaic_loss_at_baseline_time", "glue")}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main(*(sys.argv[1:] or ["benchmarks/results/quality_run2", "benchmarks/results/quality"]))
