"""Mutation check: do the tests catch one-line (or one-idea) breakages of the code they guard?

For each mutation: apply its text replacements to a throw-away copy of the repository (a detached `git worktree` of a
commit, HEAD by default -- never the working tree, which others may be editing), run the tests named for it in that
copy, record which fail, restore the file. A mutation is *caught* when at least one of its tests fails; the script
first checks that all the named tests pass on the unmutated copy (else "caught" would mean nothing). It exits 1 if
the baseline fails, a replacement's text is not found exactly once, or a mutation survives.

    python tests/mutations/run_mutations.py                 # all mutations, at HEAD; prints the markdown table
    python tests/mutations/run_mutations.py --only gelu_tanh alibi_sign --ref <commit>
    python tests/mutations/run_mutations.py --list

Not part of the CI test run (tests/mutations holds no test_*.py). CPU only; ~3-4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = "mosaic_bert/modeling/modeling_bert.py"
OPS = "mosaic_bert/modeling/flash_attn_triton.py"
EQUIV = "tests/modeling/test_original_equivalence.py"
TWO_PROCESSES = "tests/train/test_pretrain.py::test_two_processes_match_one"
RECIPE_RATES = "tests/train/test_masking.py::test_recipes_mask_30_percent_for_training_and_15_for_evaluation"


@dataclass
class Mutation:
    name: str
    what: str
    file: str
    edits: list[tuple[str, str]]      # (exact text, replacement); each text must occur exactly once in the file
    tests: list[str]                  # pytest node ids, run together in one session


MUTATIONS = [
    Mutation("gelu_tanh", "exact GELU -> tanh GELU in the GeGLU (inference path)", MODEL,
             [("F.dropout(F.gelu(gated) * non_gated, p, training)",
               'F.dropout(F.gelu(gated, approximate="tanh") * non_gated, p, training)')],
             [EQUIV]),
    Mutation("gelu_tanh_train_op", "exact GELU -> tanh GELU in the training GeGLU op (PyTorch path)", OPS,
             [("    h = torch.nn.functional.gelu(gate) * up\n",
               '    h = torch.nn.functional.gelu(gate, approximate="tanh") * up\n')],
             ["tests/modeling/test_geglu_op.py", EQUIV]),
    Mutation("geglu_halves_swapped_train_op", "GeGLU halves swapped in the training op (PyTorch path, fwd + bwd)",
             OPS, [("    gate, up = gate_up.float().split(i2 // 2, dim=-1)\n    h = ",
                    "    up, gate = gate_up.float().split(i2 // 2, dim=-1)\n    h = "),
                   ("    gate, up = gate_up.float().split(i2 // 2, dim=-1)\n    d = ",
                    "    up, gate = gate_up.float().split(i2 // 2, dim=-1)\n    d = ")],
             ["tests/modeling/test_geglu_op.py", EQUIV]),
    Mutation("alibi_slope_order", "ALiBi slopes in reversed head order", MODEL,
             [("        return power_of_2(n_heads)\n", "        return power_of_2(n_heads)[::-1]\n")],
             [EQUIV, "tests/modeling/test_modeling.py::test_alibi_slopes_follow_the_paper"]),
    Mutation("alibi_sign", "ALiBi bias +slope·dist instead of −slope·dist (PyTorch attention paths; the Triton op "
             "has its own)", MODEL,
             [("return -slopes[:, None, None] * distance", "return slopes[:, None, None] * distance")],
             [EQUIV]),
    Mutation("pre_ln", "post-LN -> pre-LN (both sublayers: LayerNorm on the input, plain residual out)", MODEL,
             [("        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)\n",
               "        return self.dropout(self.dense(hidden_states)) + input_tensor\n"),
              ("        context = self.self(hidden_states, seqs, attention_fn)\n",
               "        context = self.self(self.output.LayerNorm(hidden_states), seqs, attention_fn)\n"),
              ("        gate_up = self.gated_layers(hidden_states)  #",
               "        gate_up = self.gated_layers(self.layernorm(hidden_states))  #"),
              ("        return self.layernorm(self.wo(hidden_states) + residual)\n",
               "        return self.wo(hidden_states) + residual\n")],
             [EQUIV]),
    Mutation("mlp_pre_ln", "post-LN -> pre-LN in the MLP sublayer only", MODEL,
             [("        gate_up = self.gated_layers(hidden_states)  #",
               "        gate_up = self.gated_layers(self.layernorm(hidden_states))  #"),
              ("        return self.layernorm(self.wo(hidden_states) + residual)\n",
               "        return self.wo(hidden_states) + residual\n")],
             [EQUIV]),
    Mutation("geglu_halves_swapped", "GeGLU: GELU on the second half, times the first (inference path)", MODEL,
             [("gated, non_gated = gate_up.split(", "non_gated, gated = gate_up.split(")],
             [EQUIV]),
    Mutation("qk_swapped", "attention scores K·Qᵀ instead of Q·Kᵀ (PyTorch attention paths)", MODEL,
             [("    q, k, v = padded.permute(2, 0, 3, 1, 4).unbind(0)\n",
               "    k, q, v = padded.permute(2, 0, 3, 1, 4).unbind(0)\n")],
             [EQUIV]),
    Mutation("rank_dropout_seed", "per-rank dropout seed: microbatch index a*P+rank -> a (trainer's reseeding)",
             "mosaic_bert/train/trainer.py",
             [("seed_microbatch(self.plan.seed, step, self.plan.micro_index(a))",
               "seed_microbatch(self.plan.seed, step, a)")],
             [TWO_PROCESSES]),
    Mutation("rank_micro_index", "BatchPlan.micro_index a*P+rank -> a (seed and data shard of each rank)",
             "mosaic_bert/train/data/loader.py",
             [("        return a * self.num_processes + self.rank\n", "        return a\n")],
             [TWO_PROCESSES]),
    Mutation("cpu_group_off", "processes launched on a CUDA-less machine not joined into a gloo group",
             "mosaic_bert/train/runtime.py",
             [("    cpu_group = world > 1 and not torch.cuda.is_available()\n", "    cpu_group = False\n")],
             [TWO_PROCESSES]),
    Mutation("flop_attention_term", "training FLOPs: attention term 12·L·h·Σn² -> 6·L·h·Σn²", "mosaic_bert/train/flops.py",
             [("12.0 * layers * hidden * attn_sq", "6.0 * layers * hidden * attn_sq")],
             ["tests/train/test_pretrain.py::test_step_flops_match_torch_flop_counter"]),
    Mutation("masking_rate_29", "masking rate 30 % -> 29 % (the masker's selection threshold)",
             "mosaic_bert/train/masking.py",
             [("selected = (u_sel < self.p) & ~special", "selected = (u_sel < self.p - 0.01) & ~special")],
             ["tests/train/test_masking.py::test_matches_transformers_collator_statistics",
              "tests/train/test_masking.py::test_ratio_and_80_10_10"]),
    Mutation("masking_default_29", "masking rate 30 % -> 29 % (the recipe default, used by the offline default run)",
             "mosaic_bert/train/config.py",
             [("    mlm_probability: float = 0.30\n", "    mlm_probability: float = 0.29\n")],
             [RECIPE_RATES]),
    Mutation("masking_recipe_29", "masking rate 30 % -> 29 % (the paper recipe mosaic-bert-base-uncased.yaml)",
             "mosaic_bert/train/recipes/mosaic-bert-base-uncased.yaml",
             [("  mlm_probability: 0.30\n", "  mlm_probability: 0.29\n")],
             [RECIPE_RATES, "tests/train/test_recipe.py::test_paper_recipe_numbers"]),
    Mutation("masking_rate_2pct", "masking rate 2 % lower (0.300 -> 0.294)", "mosaic_bert/train/masking.py",
             [("selected = (u_sel < self.p) & ~special", "selected = (u_sel < self.p * 0.98) & ~special")],
             ["tests/train/test_masking.py::test_matches_transformers_collator_statistics"]),
]


def sh(cmd, cwd, **kw):
    return subprocess.run(cmd, cwd=cwd, text=True, capture_output=True, **kw)


def run_tests(copy: Path, tests: list[str], tag: str) -> dict[str, str]:
    """{test id: "passed" | "failed" | "skipped"} for one pytest session in the copy (its own package first on the
    path: the editable install points at the working tree)."""
    xml = Path(tempfile.mkdtemp(prefix="mut-")) / f"{tag}.xml"
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    p = sh([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *tests], copy, env=env,
           timeout=1800)
    if not xml.exists():
        raise RuntimeError(f"pytest wrote no report ({tag}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    results = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        status = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                status = "failed"
            elif child.tag == "skipped" and status == "passed":
                status = "skipped"
        results[name] = status
    if not results:
        raise RuntimeError(f"no test ran ({tag}):\n{p.stdout[-2000:]}")
    return results


def apply(copy: Path, m: Mutation):
    path = copy / m.file
    text = path.read_text()
    for old, new in m.edits:
        n = text.count(old)
        if n != 1:
            raise RuntimeError(f"{m.name}: expected the text to mutate exactly once in {m.file}, found {n}: {old!r}")
        text = text.replace(old, new)
    path.write_text(text)


def restore(copy: Path, m: Mutation):
    r = sh(["git", "checkout", "--", m.file], copy)
    if r.returncode != 0 or sh(["git", "status", "--porcelain", "--untracked-files=no"], copy).stdout.strip():
        raise RuntimeError(f"could not restore {m.file} in {copy}: {r.stderr}")


def summarize(results: dict[str, str]) -> str:
    failed = sorted(k for k, v in results.items() if v == "failed")
    if not failed:
        return "-"
    short = [f.split("::")[-1] for f in failed]
    files = sorted({f.split("::")[0] for f in failed})
    per_fixture = [f"{fx}: {sum(fx in f for f in failed)}/{sum(fx in r for r in results)}"
                   for fx in ("original_tiny", "original_scaled") if any(fx in r for r in results)]
    return (f"{len(failed)}/{len(results)} fail ({', '.join(files)}" + (f"; {', '.join(per_fixture)}" if per_fixture
            else "") + "): " + ", ".join(sorted(set(s.split("[")[0] for s in short))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="HEAD", help="commit to mutate (default HEAD)")
    ap.add_argument("--only", nargs="*", help="mutation names")
    ap.add_argument("--list", action="store_true")
    ns = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not ns.only or m.name in ns.only]
    if ns.list or not chosen:
        for m in MUTATIONS:
            print(f"{m.name:22s} {m.what}")
        return 0 if ns.list else 2
    commit = sh(["git", "rev-parse", "--short", ns.ref], ROOT).stdout.strip()
    copy = Path(tempfile.mkdtemp(prefix="mosaic-mut-")) / "repo"
    r = sh(["git", "worktree", "add", "--detach", str(copy), ns.ref], ROOT)
    if r.returncode != 0:
        print(r.stderr, file=sys.stderr)
        return 1
    ok, rows = True, []
    try:
        tests = sorted({t for m in chosen for t in m.tests})
        t0 = time.time()
        base = run_tests(copy, tests, "baseline")
        bad = {k: v for k, v in base.items() if v != "passed"}
        if bad:   # once more, alone: a flaky test is reported as such, a broken one stops the run
            print(f"baseline: {sorted(bad)} did not pass; running them again", flush=True)
            modules = {b.split("::")[0] for b in bad}
            again = run_tests(copy, [t for t in tests if Path(t.split("::")[0]).stem in modules], "baseline-again")
            bad = {k: v for k, v in bad.items() if again.get(k) != "passed"}
        print(f"baseline at {commit}: {len(base)} tests, {len(base) - len(bad)} pass ({time.time() - t0:.0f} s)",
              flush=True)
        if bad:
            print(f"baseline not clean, mutation results would mean nothing: {bad}", file=sys.stderr)
            return 1
        for m in chosen:
            t0 = time.time()
            apply(copy, m)
            try:
                res = run_tests(copy, m.tests, m.name)
            finally:
                restore(copy, m)
            caught = any(v == "failed" for v in res.values())
            ok &= caught
            rows.append((m, caught, summarize(res)))
            print(f"{m.name}: {'caught' if caught else 'SURVIVED'} ({time.time() - t0:.0f} s) {summarize(res)}",
                  flush=True)
    finally:
        sh(["git", "worktree", "remove", "--force", str(copy)], ROOT)
    print(f"\nMutations at {commit} (`python tests/mutations/run_mutations.py`):\n")
    print("| mutation | file | caught | failing tests |\n|---|---|---|---|")
    for m, caught, s in rows:
        print(f"| `{m.name}`: {m.what} | `{m.file.split('/')[-1]}` | {'yes' if caught else '**NO**'} | {s} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
