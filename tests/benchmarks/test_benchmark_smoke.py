"""The side-by-side benchmark's code path on CPU (``benchmarks/benchmark.py compare --smoke``): every case and model
gives a row, the numbers in them are consistent, a model that fails is a row and not a crash."""

import importlib.util
import json
import math
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_under_test", os.path.join(ROOT, "benchmarks", "benchmark.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def smoke(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    rows = bench.main(["compare", "--smoke", "--out", str(out), "--tag", "smoke"])
    return out, rows


def test_smoke_covers_the_matrix(bench, smoke):
    out, rows = smoke
    names = [(r["case"], r["model"]) for r in rows]
    assert names == [(c.smoke().name, m.name) for c in bench.CASES for m in bench.MODELS]
    assert len({c.smoke().name for c in bench.CASES}) == len(bench.CASES) == 9
    assert {c.kind for c in bench.CASES} == {"train", "infer"}
    for r in rows:
        if "-compiled" in r["model"]:  # compiled rows (ours-compiled-bucketed too)
            assert "--smoke" in r["skipped"]
            continue
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["step_ms"] > 0 and r["flops"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["real_tokens_per_step"] / (r["step_ms"] / 1e3))
    on_disk = json.loads((out / "compare_smoke.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(rows)) and on_disk["env"]["torch"] == torch.__version__
    md = (out / "compare_smoke.md").read_text()
    assert all(f"| {c.smoke().name} | ours |" in md for c in bench.CASES)
    assert (out / "compare_smoke.png").stat().st_size > 1000
    assert len(list(out.iterdir())) == 3


def test_ratio_column_is_ours_over_the_best_peer(smoke):
    _, rows = smoke
    for case in {r["case"] for r in rows}:
        peers = [r["tokens_per_s"] for r in rows if r["case"] == case and not r["ours"] and "tokens_per_s" in r]
        ours = [r for r in rows if r["case"] == case and r["model"] == "ours"]
        assert peers and len(ours) == 1
        assert ours[0]["vs_best_peer"] == pytest.approx(ours[0]["tokens_per_s"] / max(peers))
    assert not any("vs_best_peer" in r for r in rows if not r["ours"])


def test_add_ratios_by_hand(bench):
    rows = [dict(case="a", model="p1", ours=False, tokens_per_s=100.0),
            dict(case="a", model="p2", ours=False, tokens_per_s=300.0),
            dict(case="a", model="p3", ours=False, error="boom"),
            dict(case="a", model="us", ours=True, tokens_per_s=450.0),
            dict(case="b", model="us", ours=True, tokens_per_s=1.0)]  # no peer ran: no ratio
    bench.add_ratios(rows)
    assert rows[3]["vs_best_peer"] == 1.5 and rows[3]["best_peer"] == "p2"
    assert "vs_best_peer" not in rows[4]


def test_padding_and_flop_accounting(bench):
    case = bench.Case("train", 64, 32, 0.25)
    batches = bench.case_batches(case, 4, 1000, seed=0)
    again = bench.case_batches(case, 4, 1000, seed=0)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(batches, again) for k in a)  # same batches for every model
    fill = torch.cat([b["attention_mask"] for b in batches]).float().mean().item()
    assert fill == pytest.approx(0.75, abs=0.03)
    lab = torch.cat([b["labels"] for b in batches])
    real = torch.cat([b["attention_mask"] for b in batches]).bool()
    assert not (lab[~real] != -100).any() and (lab[real] != -100).float().mean().item() == pytest.approx(0.3, abs=0.03)
    tok, sq, head = bench.work_stats(case, batches[:1], real=True)
    lens = batches[0]["attention_mask"].sum(1).double()
    assert (tok, sq, head) == (lens.sum().item(), (lens**2).sum().item(), (batches[0]["labels"] != -100).sum().item())
    assert bench.work_stats(case, batches[:1], real=False) == (64 * 32, 64 * 32 * 32, 64 * 32)
    full = bench.case_batches(bench.Case("infer", 8, 16, 0.0), 1, 1000, seed=1)[0]
    assert full["attention_mask"].all() and "labels" not in full


def test_a_failing_model_is_a_row_not_a_crash(bench, tmp_path):
    def broken(kind, tiny):
        raise RuntimeError("cannot build this one")

    models = (bench.MODELS[0], bench.ModelSpec("broken", broken, ours=True), bench.MODELS[3])
    args = bench.parse_args(["--smoke", "--out", str(tmp_path), "--only", "infer-128x512-pad25"])
    rows = bench.run_compare(args, models)
    assert [r["model"] for r in rows] == ["hf-bert-sdpa", "broken", "ours"]
    assert rows[1]["error"] == "RuntimeError: cannot build this one" and "vs_best_peer" not in rows[1]
    assert rows[2]["tokens_per_s"] > 0 and math.isfinite(rows[2]["vs_best_peer"])


def test_compiled_rows_record_failures(bench, tmp_path):
    """Compiling (eager backend on CPU: Dynamo's tracing, the part our model fails today) gives a timed row or an
    error row for each compiled model, and the run finishes."""
    rows = bench.main(["--smoke", "--smoke-compile", "--compile-backend", "eager", "--out", str(tmp_path),
                       "--only", "train-256x128-pad25,*-compiled"])
    assert [r["model"] for r in rows] == ["hf-bert-sdpa-compiled", "ours-compiled"]
    for r in rows:
        assert ("tokens_per_s" in r and r["tokens_per_s"] > 0) or r["error"]
    assert "tokens_per_s" in rows[0], rows[0]  # HF BERT compiles


def test_cpu_layout_matches_the_models_own_unpadding(bench):
    from mosaic_bert.modeling.bert_padding import unpad_mask

    b = bench.case_batches(bench.Case("train", 8, 16, 0.25), 1, 1000, seed=3)[0]
    lay = bench.cpu_layout(b)
    u = unpad_mask(b["attention_mask"])
    assert torch.equal(lay["indices"], u.indices) and torch.equal(lay["cu_seq_lens_q"], u.cu_seqlens.to(torch.int32))
    lens = b["attention_mask"].sum(1)
    assert lay["max_length_q"] == int(lens.max()) <= int(u.max_seqlen) and isinstance(lay["max_length_q"], int)
    assert all(lay[k] is b[k] for k in b)


def test_target_lines_by_hand(bench):
    rows = [dict(case="c", model="hf-bert-sdpa", ours=False, tokens_per_s=100.0, peak_mem_gib=10.0),
            dict(case="c", model="hf-bert-sdpa-compiled", ours=False, tokens_per_s=200.0, peak_mem_gib=8.0),
            dict(case="c", model="ours", ours=True, tokens_per_s=250.0, peak_mem_gib=6.0),
            dict(case="c", model="ours-compiled", ours=True, tokens_per_s=320.0, peak_mem_gib=9.0)]
    (line,) = bench.target_lines(rows)
    assert "ours-compiled / hf-bert-sdpa-compiled = 1.60x" in line and "target >= 1.5: met" in line
    assert "peak memory 9.00 vs HF BERT 8.00 GiB (NOT met)" in line
