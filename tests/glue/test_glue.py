"""Tests of the GLUE harness (mosaic_bert.glue.tasks, mosaic_bert.glue): CPU only, no ../shared."""

import dataclasses
import json
import math
import os
import re

import numpy as np
import pytest
import torch

from mosaic_bert.glue import tasks as gt
from mosaic_bert.errors import GlueDataError, MosaicBertError
from mosaic_bert.glue.tasks import TASKS

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "glue")


# ----------------------------------------------------------------------------------------
# the task table against the paper (numbers typed in here, independent of the table)
# ----------------------------------------------------------------------------------------
PAPER = {  # lr, weight decay, batch, epochs, seeds, starts from MNLI
    "mnli": (5e-5, 5e-6, 48, 3, 1, False),
    "qnli": (1e-5, 1e-6, 16, 10, 1, False),
    "qqp": (3e-5, 3e-6, 16, 5, 1, False),
    "rte": (1e-5, 1e-5, 16, 3, 5, True),
    "cola": (5e-5, 5e-6, 32, 10, 4, False),
    "sst2": (3e-5, 3e-6, 16, 3, 3, False),
    "mrpc": (8e-5, 8e-6, 32, 10, 5, True),
    "stsb": (3e-5, 3e-6, 32, 10, 5, True),
}
METRICS = {
    "mnli": {"accuracy"}, "qnli": {"accuracy"}, "qqp": {"accuracy", "f1"}, "rte": {"accuracy"},
    "cola": {"matthews"}, "sst2": {"accuracy"}, "mrpc": {"accuracy", "f1"}, "stsb": {"pearson", "spearman"},
}
NUM_LABELS = {"mnli": 3, "qnli": 2, "qqp": 2, "rte": 2, "cola": 2, "sst2": 2, "mrpc": 2, "stsb": 1}


def test_task_table_matches_paper():
    assert set(TASKS) == set(PAPER)
    for name, (lr, wd, bs, ep, ns, mnli) in PAPER.items():
        t = TASKS[name]
        assert (t.lr, t.weight_decay, t.batch_size, t.epochs, t.num_seeds, t.from_mnli) == (lr, wd, bs, ep, ns, mnli), name
        assert len(t.seeds) == ns and len(set(t.seeds)) == ns
        assert set(t.metrics) == METRICS[name], name
        assert t.num_labels == NUM_LABELS[name], name
        assert t.is_regression == (name == "stsb")
    with pytest.raises(Exception):  # frozen
        TASKS["rte"].lr = 1.0


def test_resolve_tasks():
    assert gt.resolve_tasks("all")[0] == "mnli" and len(gt.resolve_tasks("all")) == 8
    assert gt.resolve_tasks("RTE,SST-2,mnli") == ["mnli", "rte", "sst2"]
    assert gt.resolve_tasks(["sts-b", "cola", "cola"]) == ["stsb", "cola"]
    with pytest.raises(MosaicBertError, match="unknown GLUE task 'wnli'"):
        gt.resolve_tasks("wnli")


# ----------------------------------------------------------------------------------------
# metrics and aggregation on hand-computed examples
# ----------------------------------------------------------------------------------------
def test_metrics_hand_computed():
    y = np.array([1, 1, 0, 0])
    p = np.array([1, 0, 0, 0])  # TP 1, FN 1, TN 2, FP 0
    assert gt.compute_metric("accuracy", p, y) == pytest.approx(75.0)
    assert gt.compute_metric("f1", p, y) == pytest.approx(100 * 2 / 3)  # P 1, R 1/2
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 2 / sqrt(1*2*2*3)
    assert gt.compute_metric("matthews", p, y) == pytest.approx(100 * 2 / math.sqrt(12))
    # Pearson of (1,2,3) and (1,2,4): cov 3, |dx| sqrt 2, |dy| sqrt(42)/3 -> 9/sqrt(84)
    assert gt.compute_metric("pearson", np.array([1.0, 2, 4]), np.array([1.0, 2, 3])) == pytest.approx(100 * 9 / math.sqrt(84))
    # Spearman: ranks (1,3,2) vs (1,2,3): 1 - 6*sum d^2 / (n(n^2-1)) = 1 - 6*2/24 = 0.5
    assert gt.compute_metric("spearman", np.array([0.1, 0.9, 0.5]), np.array([1.0, 2, 3])) == pytest.approx(50.0)
    # a constant prediction has no correlation: 0, not nan
    assert gt.compute_metric("pearson", np.zeros(3), np.array([1.0, 2, 3])) == 0.0


def test_task_metrics_from_logits():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5], [0.0, 1.0]])  # argmax 0 1 0 1
    m = gt.task_metrics(TASKS["mrpc"], logits, np.array([0, 1, 1, 1]))
    assert m == pytest.approx({"accuracy": 75.0, "f1": 80.0})  # P 1, R 2/3
    m = gt.task_metrics(TASKS["stsb"], np.array([[0.5], [1.0], [2.0]]), np.array([1.0, 2.0, 3.0]))
    assert m == pytest.approx({"pearson": 100 * 1.5 / math.sqrt(7 / 6 * 2), "spearman": 100.0})


def test_aggregation():
    runs = [
        {"epochs": [{"epoch": 1, "metrics": {"accuracy": 80.0, "f1": 90.0}},   # 85
                    {"epoch": 2, "metrics": {"accuracy": 70.0, "f1": 80.0}}]},  # 75
        {"epochs": [{"epoch": 1, "metrics": {"accuracy": 60.0, "f1": 70.0}},   # 65
                    {"epoch": 2, "metrics": {"accuracy": 90.0, "f1": 100.0}}]},  # 95
    ]
    a = gt.aggregate_task(runs)
    assert a["final"] == pytest.approx((75 + 95) / 2)
    assert a["best_epoch"] == pytest.approx((85 + 95) / 2)
    assert a["metrics_final"] == pytest.approx({"accuracy": 80.0, "f1": 90.0})
    g = gt.glue_score({"rte": 60.0, "sst2": 90.0})
    assert g == {"score": 75.0, "tasks": ["rte", "sst2"], "complete": False}
    assert gt.glue_score({n: 1.0 for n in TASKS})["complete"]


# ----------------------------------------------------------------------------------------
# data loading and validation
# ----------------------------------------------------------------------------------------
def test_read_fixtures():
    cola = gt.read_glue_tsv(os.path.join(FIXTURES, "CoLA", "train.tsv"), TASKS["cola"])  # no header
    assert len(cola["text_a"]) == 40 and set(cola["label"]) <= {0, 1}
    assert cola["text_a"][0].startswith("Our friends won't buy this analysis")
    mrpc = gt.read_glue_tsv(os.path.join(FIXTURES, "MRPC", "dev.tsv"), TASKS["mrpc"])  # BOM, bare quotes
    assert len(mrpc["text_b"]) == 24 and mrpc["text_b"][0].startswith('"The foodservice pie')
    sts = gt.read_glue_tsv(os.path.join(FIXTURES, "STS-B", "dev.tsv"), TASKS["stsb"])
    assert sts["label"][:2] == [5.0, 4.75]
    rte = gt.read_glue_tsv(os.path.join(FIXTURES, "RTE", "dev.tsv"), TASKS["rte"])
    assert rte["label"][0] == 1  # not_entailment
    train, evals = gt.load_task_data(TASKS["mnli"], FIXTURES)
    assert set(evals) == {"matched", "mismatched"} and len(train) == 48
    assert sorted(set(train["label"])) == [0, 1, 2]


def test_data_errors_are_clear(tmp_path):
    d = tmp_path / "RTE"
    d.mkdir()
    (d / "train.tsv").write_text("index\tsentence1\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(GlueDataError, match=r"train\.tsv: column 'sentence2' not found"):
        gt.read_glue_tsv(str(d / "train.tsv"), TASKS["rte"])
    (d / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tyes\n")
    with pytest.raises(GlueDataError, match=r"dev\.tsv: column 'label' holds labels \['yes'\]"):
        gt.read_glue_tsv(str(d / "dev.tsv"), TASKS["rte"])
    with pytest.raises(GlueDataError, match=r"(?s)SST-2/train\.tsv.*--data-dir"):
        gt.check_data_available(["rte", "sst2"], str(tmp_path))
    (d / "dev.tsv").write_text("index,sentence1,sentence2,label\n0,a,b,entailment\n")  # csv, not tsv
    with pytest.raises(GlueDataError, match="column 'sentence1' not found"):
        gt.read_glue_tsv(str(d / "dev.tsv"), TASKS["rte"])


# ----------------------------------------------------------------------------------------
# end to end with a tiny model
# ----------------------------------------------------------------------------------------
def _tiny_tokenizer(folder):
    from transformers import BertTokenizerFast

    words = set()
    for root, _, files in os.walk(FIXTURES):
        for f in files:
            if f.endswith(".tsv"):
                with open(os.path.join(root, f), encoding="utf-8-sig") as fh:
                    words.update(re.findall(r"\w+|[^\w\s]", fh.read().lower()))
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words) + [f"##{c}" for c in chars]
    vocab = list(dict.fromkeys(vocab))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(os.path.join(folder, "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(folder)
    return tok


def _mosaic_available():
    try:
        from mosaic_bert import BertConfig, BertForSequenceClassification  # noqa: F401
    except Exception:
        return False
    return True


def _make_tiny_model(folder, kind):
    tok = _tiny_tokenizer(folder)
    common = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    if kind == "mosaic":
        from mosaic_bert import BertConfig, BertForSequenceClassification

        model = BertForSequenceClassification(BertConfig(**common))
    else:
        from transformers import BertConfig, BertForSequenceClassification

        model = BertForSequenceClassification(BertConfig(**common))
    model.save_pretrained(folder)
    return folder


MODEL_KINDS = [
    pytest.param("mosaic", marks=pytest.mark.skipif(not _mosaic_available(), reason="mosaic_bert model not importable yet")),
    "hf",
]


@pytest.fixture(scope="module", params=MODEL_KINDS)
def tiny_model(request, tmp_path_factory):
    return _make_tiny_model(str(tmp_path_factory.mktemp(f"tiny_{request.param}")), request.param)


def test_end_to_end_single_pair_regression(tiny_model, tmp_path):
    from mosaic_bert.glue.finetune import run_glue

    out = str(tmp_path / "out")
    res = run_glue(tiny_model, "sst2,rte,stsb", FIXTURES, out, num_seeds=1, epochs=2,
                   max_train_samples=16, max_eval_samples=12)
    with open(os.path.join(out, "results.json")) as fh:
        on_disk = json.load(fh)
    assert on_disk["glue"]["tasks"] == ["rte", "sst2", "stsb"] and not on_disk["glue"]["complete"]
    for name, mets in (("sst2", {"accuracy"}), ("rte", {"accuracy"}), ("stsb", {"pearson", "spearman"})):
        t = res["tasks"][name]
        assert [e["epoch"] for e in t["runs"][0]["epochs"]] == [1, 2]
        assert set(t["runs"][0]["epochs"][-1]["metrics"]) == mets
        assert t["runs"][0]["train_examples"] == 16 and t["eval_examples"] == {"dev": 12}
        assert t["runs"][0]["steps"] == 2 * math.ceil(16 / TASKS[name].batch_size)
        assert math.isfinite(t["final"]) and t["best_epoch"] >= t["final"] - 1e-9
    assert "NO MNLI checkpoint" in res["tasks"]["rte"]["start"]
    assert "NO MNLI checkpoint" in res["tasks"]["stsb"]["start"]
    assert res["tasks"]["sst2"]["start"] == "pretrained"
    md = open(os.path.join(out, "results.md")).read()
    assert "NOT the full GLUE score" in md and "| stsb |" in md


def test_mnli_to_rte_handoff(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from mosaic_bert.glue.finetune import load_model, run_glue

    out = str(tmp_path / "out")
    res = run_glue(tiny_model, "rte,mnli", FIXTURES, out, num_seeds=1, epochs=2,  # step 0 of the schedule has lr 0
                   max_train_samples=24, max_eval_samples=8)
    ckpt = os.path.join(out, "mnli_checkpoint")
    assert set(res["tasks"]["mnli"]["runs"][0]["epochs"][0]["metrics"]) == {"matched_accuracy", "mismatched_accuracy"}
    assert res["tasks"]["rte"]["start"].startswith(f"mnli checkpoint {ckpt}")

    mnli_sd = load_file(os.path.join(ckpt, "model.safetensors"))
    pre_sd = load_file(os.path.join(tiny_model, "model.safetensors"))
    for task_name in ("rte", "stsb"):
        torch.manual_seed(123)
        model = load_model(ckpt, TASKS[task_name], fresh_classifier=True)
        sd = model.state_dict()
        prefix = model.base_model_prefix + "."
        enc = [k for k in sd if k.startswith(prefix)]
        head = [k for k in sd if not k.startswith(prefix)]
        assert enc and head
        # the encoder is MNLI's (and MNLI training did move it away from the pretrained one) ...
        assert all(torch.equal(sd[k], mnli_sd[k]) for k in enc if k in mnli_sd)
        assert any(not torch.equal(mnli_sd[k], pre_sd[k]) for k in enc if k in mnli_sd and k in pre_sd)
        # ... the classifier is fresh, sized for the task
        assert model.config.num_labels == TASKS[task_name].num_labels
        assert model.config.problem_type == TASKS[task_name].problem_type
        for k in head:
            assert k not in mnli_sd or sd[k].shape != mnli_sd[k].shape or not torch.equal(sd[k], mnli_sd[k])
    # same label count as MNLI: still re-initialised (not silently kept)
    torch.manual_seed(123)
    m3 = load_model(ckpt, TASKS["mnli"], fresh_classifier=True)
    w = [k for k in m3.state_dict() if not k.startswith(m3.base_model_prefix + ".") and k.endswith("weight")]
    assert w and all(not torch.equal(m3.state_dict()[k], mnli_sd[k]) for k in w if k in mnli_sd)


def test_cli_help():
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "glue.py")
    r = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--max-train-samples" in r.stdout and "--torch-compile" in r.stdout


def test_training_arguments_carry_the_recipe(tmp_path):
    from mosaic_bert.glue.finetune import _training_args

    task = TASKS["mrpc"]
    args = _training_args(task, str(tmp_path), seed=5, epochs=2, steps_per_epoch=3, bf16=False, logging_steps=50,
                          max_grad_norm=0.0, torch_compile=True)
    assert args.per_device_train_batch_size == task.batch_size and args.num_train_epochs == 2 and args.seed == 5
    assert args.logging_steps == 3 and args.max_grad_norm == 0.0 and args.torch_compile


def test_optimizer_and_schedule():
    """The task table's numbers reach pretraining's decoupled AdamW and the warmup/decay schedule."""
    from mosaic_bert.glue.finetune import build_optimization
    from mosaic_bert.train.optim import DecoupledAdamW

    task = TASKS["rte"]

    def at_peak(model, **recipe):  # the schedule starts at lr 0; step it to the end of the 6-step warmup
        opt, sched = build_optimization(model, dataclasses.replace(task, **recipe), total_steps=100)
        for _ in range(6):
            sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(recipe["lr"])
        return opt

    lin = torch.nn.Linear(4, 3)
    opt = at_peak(lin, lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, DecoupledAdamW) and len(opt.param_groups) == 1  # one group: biases decayed too
    assert opt.param_groups[0]["betas"] == (0.9, 0.98) and opt.param_groups[0]["eps"] == 1e-6
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    for p in lin.parameters():
        p.grad = torch.zeros_like(p)  # Adam update 0: only the decoupled decay acts
    opt.step()
    assert torch.allclose(lin.weight, w0 * (1 - 0.1)) and torch.allclose(lin.bias, b0 * (1 - 0.1))
    # a state_dict round trip (accelerate / Trainer do one) keeps the decay, not a zeroing factor
    opt.load_state_dict(opt.state_dict())
    w1 = lin.weight.detach().clone()
    opt.step()
    assert torch.allclose(lin.weight, w1 * (1 - 0.1))
    # Adam part: with a constant gradient g the first step moves by lr * g/(|g| + eps) ~ lr
    lin2 = torch.nn.Linear(2, 1, bias=False)
    w0 = lin2.weight.detach().clone()
    opt = at_peak(lin2, lr=1e-2, weight_decay=0.0)
    lin2.weight.grad = torch.full_like(lin2.weight, 0.5)
    opt.step()
    assert torch.allclose(lin2.weight, w0 - 1e-2 * 0.5 / (0.5 + 1e-6))

    opt, sched = build_optimization(lin, dataclasses.replace(task, lr=1.0, weight_decay=0.0), total_steps=100)
    lrs = []  # warmup = 6% of 100 steps
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[3] == pytest.approx(0.5) and lrs[6] == pytest.approx(1.0)  # linear warmup
    assert all(a >= b for a, b in zip(lrs[6:], lrs[7:]))  # then linear decay ...
    assert lrs[-1] == pytest.approx(1 / 94) and opt.param_groups[0]["lr"] == 0.0  # ... to 0


def test_trust_remote_code_is_a_choice(tiny_model, monkeypatch):
    """Remote code runs for a local folder that ships it (ours), never for a Hub id unless asked for."""
    from transformers import AutoModelForSequenceClassification

    from mosaic_bert.glue.finetune import load_model

    seen = []

    class Stop(Exception):
        pass

    def capture(path, **kw):
        seen.append((path, kw.get("trust_remote_code")))
        raise Stop

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", capture)
    ships_code = "auto_map" in json.load(open(os.path.join(tiny_model, "config.json")))
    for args, want in (((tiny_model,), ships_code), (("some-org/some-bert",), False),
                       (("some-org/some-bert", True), True), ((tiny_model, False), False)):
        with pytest.raises(Stop):
            load_model(args[0], TASKS["rte"], trust_remote_code=args[1] if len(args) > 1 else None)
        assert seen[-1] == (args[0], want), (args, seen[-1])
