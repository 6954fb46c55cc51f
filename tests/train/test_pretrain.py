"""End-to-end pretraining on CPU: kill -9 + resume is exact, 2 processes == 1, the folder loads as remote code,
clear errors. Tiny model, tiny data (tests/fixtures/pretrain), ~1-2 minutes on 2 cores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "tests" / "fixtures" / "pretrain" / "pydocs_small.txt"
SCRIPT = ROOT / "scripts" / "pretrain.py"


def tiny_args(out, cache, **extra):
    args = {
        "model.hidden_size": 32, "model.num_hidden_layers": 2, "model.num_attention_heads": 2,
        "model.intermediate_size": 64, "model.max_position_embeddings": 64, "model.alibi_starting_size": 64,
        "tokenizer.vocab_size": 512, "data.train_files": str(SMALL), "data.max_seq_len": 48, "data.cache_dir": str(cache),
        "data.valid_fraction": 0.1, "train.global_batch_size": 8, "train.microbatch_size": 4, "train.max_duration": "12ba",
        "train.lr": 2e-3, "train.log_interval": 1, "train.eval_interval": 6, "train.eval_samples": 32,
        "train.checkpoint_interval": 4, "train.keep_checkpoints": 3, "train.output_dir": str(out), "train.trackers": "none",
        "train.fill_mask_example": None, "model.hidden_dropout_prob": 0.1,
    }
    args.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in args.items()]


def child_env(**extra):
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def exit_error(code, stdout, stderr):
    return AssertionError(f"exit {code}\nSTDOUT\n{stdout[-3000:]}\nSTDERR\n{stderr[-5000:]}")


def run(args, launcher=None, check=True, resume=None):
    env = child_env()
    cmd = (launcher or [sys.executable]) + [str(SCRIPT)] + args + (["--resume"] + ([resume] if resume != "latest" else []) if resume else [])
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise exit_error(p.returncode, p.stdout, p.stderr)
    return p


KILL_AT = """
import os, signal, sys
from mosaic_bert.train.config import load_recipe
from mosaic_bert.train.state import Callback
from mosaic_bert.train.trainer import Trainer

class KillAt(Callback):   # a real kill -9 after optimizer step N, mid-run
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer):
        if trainer.state.step == self.step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

Trainer(load_recipe(None, sys.argv[2:]), callbacks=[KillAt(int(sys.argv[1]))]).fit()
"""


def run_with_kill_at(step, args):
    env = child_env()
    return subprocess.run([sys.executable, "-c", KILL_AT, str(step)] + args, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def losses(out):
    recs = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r], [(r["step"], r["eval_loss"]) for r in recs if "eval_loss" in r]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    base = tmp_path_factory.mktemp("pre")
    out = base / "straight"
    run(tiny_args(out, base / "cache"))
    return base, out


def test_straight_run_output_folder(straight):
    base, out = straight
    tr, ev = losses(out)
    assert [s for s, _ in tr] == list(range(1, 13)) and [s for s, _ in ev] == [0, 6, 12]
    assert ev[-1][1] < ev[0][1] - 0.1  # it learns: held-out loss falls over 12 steps
    for f in ("config.json", "model.safetensors", "tokenizer_config.json", "README.md", "loss_curve.png",
              "configuration_bert.py", "modeling_bert.py", "bert_padding.py", "flash_attn_triton.py"):
        assert (out / f).exists(), f
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] % 64 == 0 and "AutoModelForMaskedLM" in cfg["auto_map"]
    assert "Training recipe" in (out / "README.md").read_text()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000004", "step_0000008", "step_0000012"]


def test_kill_9_and_resume_is_exact(straight):
    base, out = straight
    out2 = base / "killed"
    p = run_with_kill_at(7, tiny_args(out2, base / "cache"))
    assert p.returncode == -9, p.stderr[-2000:]               # SIGKILL mid-run, after the step-4 checkpoint
    assert [c.name for c in (out2 / "checkpoints").iterdir() if c.name.startswith("step_")] == ["step_0000004"]
    run(tiny_args(out2, base / "cache"), resume="latest")
    (tr1, ev1), (tr2, ev2) = losses(out), losses(out2)
    assert [s for s, _ in tr2] == [s for s, _ in tr1] == list(range(1, 13))
    assert [s for s, _ in ev2] == [s for s, _ in ev1] == [0, 6, 12]   # no evaluation lost or repeated by the resume
    for (s1, a), (s2, b) in zip(tr1 + ev1, tr2 + ev2, strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-6, abs=1e-6), (s1, a, b)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launcher(*flags):
    return [sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]


def run_group(args, launcher, timeout=300, script=None):
    """Run a multi-process launch of `script` (default: the pretraining script) in its own session. On a timeout
    every rank first prints its Python stacks (faulthandler, SIGABRT), then is killed, and the test fails showing
    them. Ranks are found by the script's path in their command line: the launcher starts each rank in a session of
    its own, out of reach of a kill of the launcher's group, and a rank left alive keeps the output pipes open (the
    test would wait forever). A path unique to the test (a file in its tmp folder) keeps other runs out of reach."""
    import signal
    import time
    script = str(script or SCRIPT)
    p = subprocess.Popen(launcher + [script] + args, cwd=ROOT, env=child_env(PYTHONFAULTHANDLER="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        found = subprocess.run(["pgrep", "-f", script], capture_output=True, text=True).stdout.split()
        ranks = [int(pid) for pid in found if int(pid) != p.pid]
        for sig, pause in ((signal.SIGABRT, 5), (signal.SIGKILL, 0)):   # stacks first, then the end
            for pid in ranks:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(pause)
        os.killpg(p.pid, signal.SIGKILL)
        stdout, stderr = p.communicate()
        raise AssertionError(f"the {len(ranks)}-process run did not end within {timeout} s; rank stacks at the end of "
                             f"STDERR\nSTDOUT\n{stdout[-3000:]}\nSTDERR\n{stderr[-12000:]}")
    if p.returncode != 0:
        raise exit_error(p.returncode, stdout, stderr)
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)


def test_two_processes_match_one(straight):
    """Two real CPU processes (gloo; `accelerate launch --multi_gpu` on a machine without GPUs) with the same global
    batch train exactly as one process: same losses step by step, same held-out losses, same final weights. Dropout
    is on (0.1), so each microbatch must draw the same dropout masks on whichever rank it lands."""
    import torch
    from safetensors.torch import load_file
    base, out = straight
    out3 = base / "ddp"
    p = run_group(tiny_args(out3, base / "cache"), accelerate_launcher("--multi_gpu", "--num_processes", "2"))
    summary = json.loads((out3 / "summary.json").read_text())
    assert summary["num_processes"] == 2 and "x accumulation 1 x 2 process(es)" in p.stdout, p.stdout[-2000:]
    assert json.loads((out / "summary.json").read_text())["num_processes"] == 1
    (tr1, ev1), (tr2, ev2) = losses(out), losses(out3)
    assert [s for s, _ in tr2] == list(range(1, 13)) and [s for s, _ in ev2] == [0, 6, 12]
    for (s1, a), (s2, b) in zip(tr1 + ev1, tr2 + ev2, strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-6, abs=1e-7), (s1, a, b)   # observed: 4e-8 relative
    w1, w2 = load_file(out / "model.safetensors"), load_file(out3 / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-5, atol=1e-6), (k,   # observed: bitwise equal
                                                                       (w1[k] - w2[k]).abs().max().item())


def test_accelerate_cpu_launch_of_n_processes_is_refused(tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts one process: refused with the command that starts two."""
    p = run(tiny_args(tmp_path / "o", tmp_path / "cache"), check=False,
            launcher=accelerate_launcher("--cpu", "--num_processes", "2"))
    assert p.returncode != 0 and "started a single process" in p.stderr and "--multi_gpu" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "cache").exists()   # refused before any work


def test_loads_as_remote_code_without_the_package(straight, tmp_path):
    base, out = straight
    child = f"""
import sys
sys.modules["mosaic_bert"] = None          # the pip-installed (editable) package must not be importable
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer
m = AutoModelForMaskedLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
assert not type(m).__module__.startswith("mosaic_bert"), type(m).__module__
tok = AutoTokenizer.from_pretrained({str(out)!r})
enc = tok(["the [MASK] statement raises an exception."], return_tensors="pt")
with torch.no_grad():
    out = m(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
print("OK", type(m).__module__, tuple(out.logits.shape))
"""
    p = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-3000:]


def test_resume_from_other_config_is_refused(straight):
    base, out = straight
    p = run(tiny_args(out, base / "cache", **{"train.lr": 1e-3}), resume="latest", check=False)
    assert p.returncode == 2 and "different config" in p.stderr and "train.lr" in p.stderr, p.stderr[-2000:]


@pytest.mark.parametrize("extra,needle", [
    ({"train.global_batch_size": 10}, "not divisible by microbatch_size x processes"),
    ({"model.vocab_size": 256}, "The tokenizer has 512 tokens but model.vocab_size=256"),
    ({"data.train_files": "/nonexistent/corpus-*.txt"}, "matches no file"),
])
def test_clear_errors(straight, extra, needle, tmp_path):
    base, _ = straight
    p = run(tiny_args(tmp_path / "o", base / "cache", **extra), check=False)
    assert p.returncode == 2 and needle in p.stderr, p.stderr[-2000:]


@pytest.mark.parametrize("extra", [{"model.family": "hf"}, {"data.mode": "pack"}])
def test_hf_baseline_and_packed_rows(straight, extra, tmp_path):
    """The HF BertForMaskedLM baseline from the same script, and MosaicBERT on packed rows (document ids in attention_mask)."""
    base, _ = straight
    out = tmp_path / "o"
    run(tiny_args(out, base / "cache", **{"train.max_duration": "6ba", "train.eval_interval": 6, **extra}))
    tr, ev = losses(out)
    assert len(tr) == 6 and ev[-1][1] < ev[0][1]
    cfg = json.loads((out / "config.json").read_text())
    assert ("auto_map" in cfg) == (extra.get("model.family") != "hf")


def test_flop_count_and_peak_table():
    import torch
    from mosaic_bert.train.flops import PEAK_FLOPS_BF16, padded_batch_stats, step_flops, unpadded_batch_stats
    from mosaic_bert.train.model import round_vocab
    am = torch.tensor([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])       # packed row: docs of 3 and 2; plain row of 4
    labels = torch.full((2, 6), -100)
    labels[0, 1] = labels[1, 2] = 7
    tokens, attn_sq, head = unpadded_batch_stats({"attention_mask": am, "labels": labels})
    assert (tokens, attn_sq, head) == (9, 9 + 4 + 16, 2)
    assert padded_batch_stats({"attention_mask": (am > 0).long(), "labels": labels}) == (9, 2 * 36, 12)
    assert PEAK_FLOPS_BF16["H100"] == 989e12 and round_vocab(30522) == 30528 and round_vocab(4096) == 4096


def test_step_flops_match_torch_flop_counter():
    """The loop's training-FLOP count against what torch's FlopCounterMode measures for a tiny model's forward +
    backward (eager attention, rows without padding, every position labelled so that the last layer and the head run
    everywhere): the attention matmuls (bmm) are exactly 12*L*h*sum(n^2); the rest differs from the count exactly by
    6*tokens*(bias and LayerNorm parameters), which the 6*N*tokens rule charges as if they were matmul weights
    (~1% here, less at real sizes)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from mosaic_bert import BertConfig, BertForMaskedLM
    from mosaic_bert.train.flops import model_flop_params, step_flops, unpadded_batch_stats
    layers, hidden = 3, 64
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=512, hidden_size=hidden, num_hidden_layers=layers,
                                       num_attention_heads=4, intermediate_size=256, attention_backend="eager"))
    ids = torch.randint(5, 512, (3, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    measured = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}
    tokens, attn_sq, head = unpadded_batch_stats(batch)
    assert (tokens, attn_sq, head) == (48, 3 * 16 * 16, 48)
    assert measured["bmm"] == 12 * layers * hidden * attn_sq
    counted = step_flops(*model_flop_params(model), layers, tokens, attn_sq, head)
    vectors = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 1 and "embeddings" not in n)
    assert counted - counter.get_total_flops() == 6 * tokens * vectors
    assert counted == pytest.approx(counter.get_total_flops(), rel=0.015)


def test_checkpoint_manager_atomic_retention_and_find(tmp_path):
    """Without Accelerate: saves land complete under step_N (never a half-written one), only `keep` stay, `find`
    resolves latest / a run folder / a checkpoint folder, and says what to pass when there is nothing to resume."""
    from mosaic_bert.errors import ResumeError
    from mosaic_bert.train.checkpoint import CheckpointManager
    from mosaic_bert.train.config import load_recipe

    import torch

    class OneProcess:
        is_main_process, num_processes = True, 1
        wait_for_everyone = staticmethod(lambda: None)
        unwrap_model = staticmethod(lambda m: m)

    cm = CheckpointManager(tmp_path / "run", OneProcess(), keep=2)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    cm.track(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0))
    with pytest.raises(ResumeError, match="no checkpoint under"):
        cm.find("latest")
    assert cm.find("auto") is None and cm.find(None) is None
    r = load_recipe(None)
    for step in (4, 8, 12):
        cm.save(step, r, {"samples_seen": step * 32, "loader": {"step": step}})
    assert [p.name for p in cm.checkpoints()] == ["step_0000008", "step_0000012"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp*"))
    assert cm.find("latest") == cm.find(str(tmp_path / "run")) == cm.find(str(cm.checkpoints()[-1])) == cm.checkpoints()[-1]
    assert cm.check_compatible(cm.find("latest"), r)["loader"] == {"step": 12}
    with pytest.raises(ResumeError, match="not a checkpoint folder"):
        cm.find(str(tmp_path))


def test_compiled_fast_path_matches_eager(straight):
    """train.compile=true (what "auto" picks on CUDA): torch.compile with the loader's sync-free bucketed inputs. On
    the CPU (Inductor) it must train the same as the eager padded path: same losses step by step (no dropout, so no
    random stream differs)."""
    base, _ = straight
    common = {"model.hidden_dropout_prob": 0.0, "train.max_duration": "6ba", "train.eval_interval": 6,
              "train.checkpoint_interval": 6}
    eager, compiled = base / "eager-nodrop", base / "compiled-nodrop"
    run(tiny_args(eager, base / "cache", **common, **{"train.compile": "false"}))
    p = run(tiny_args(compiled, base / "cache", **common, **{"train.compile": "true"}))
    (tr1, ev1), (tr2, ev2) = losses(eager), losses(compiled)
    assert len(tr2) == len(tr1) == 6 and len(ev2) == len(ev1) == 2, p.stdout[-2000:]
    assert "device cpu, compiled, sync-free bucketed inputs" in p.stdout
    for (s1, a), (s2, b) in zip(tr1 + ev1, tr2 + ev2, strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-4, abs=1e-4), (s1, a, b)
