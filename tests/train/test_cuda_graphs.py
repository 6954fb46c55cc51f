"""train.cuda_graphs (off by default): where the trainer may run the compiled model under CUDA graphs, and that the
way it accumulates gradients for them (kept allocated, zeroed in place, a new graph step per microbatch) trains
exactly as the usual way (set to None after each step). The last test needs CUDA: with and without the graphs, the
same losses step by step (passed on an H100: benchmarks/results/data_gpu_e2e_run2/cuda_graphs_test.log)."""

import json
from pathlib import Path

import pytest
import torch

from mosaic_bert import errors
from mosaic_bert.train import trainer as trainer_module
from mosaic_bert.train.runtime import use_cuda_graphs

SMALL = Path(__file__).resolve().parents[1] / "fixtures" / "pretrain" / "pydocs_small.txt"
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_on_only_when_asked():
    assert not use_cuda_graphs(False, CUDA, compiled=True, num_processes=1)
    assert use_cuda_graphs(True, CUDA, compiled=True, num_processes=1)


@pytest.mark.parametrize("device, compiled, procs", [(CPU, False, 1), (CUDA, False, 2), (CPU, True, 4)])
def test_off_is_never_refused(device, compiled, procs):
    assert not use_cuda_graphs(False, device, compiled=compiled, num_processes=procs)


@pytest.mark.parametrize("device, compiled, procs, why", [
    (CPU, True, 1, "the device is cpu, not CUDA"),
    (CUDA, False, 1, "not compiled (train.compile=false)"),
    (CUDA, True, 2, "the run has 2 processes"),
])
def test_true_where_they_cannot_run_is_refused_with_the_reason(device, compiled, procs, why):
    with pytest.raises(errors.RecipeError, match="train.cuda_graphs=true cannot run") as e:
        use_cuda_graphs(True, device, compiled=compiled, num_processes=procs)
    assert why in str(e.value) and "Leave it false" in str(e.value)


def test_recipe_refuses_a_value_that_is_not_true_or_false():
    from mosaic_bert.train.config import load_recipe
    with pytest.raises(errors.RecipeError, match="train.cuda_graphs must be true or false"):
        load_recipe(None, ["train.cuda_graphs=sometimes"])
    assert load_recipe(None, []).train.cuda_graphs is False


def _recipe(tmp_path, out: str, **overrides):
    """A tiny recipe (1 layer of width 32, microbatch 8 x accumulation 2, eager, dropout 0.1) on documents of 4 to 60
    words written once per test folder; ``overrides`` as ``{"train.compile": "true", ...}``."""
    from mosaic_bert.train.config import load_recipe
    docs = tmp_path / "docs.txt"
    if not docs.exists():   # every run of a test reads the same file and tokenizer cache
        words = SMALL.read_text().split()
        docs.write_text("\n\n".join(" ".join(words[i * 7:i * 7 + 4 + (i * 13) % 57]) for i in range(240)) + "\n")
    args = {"model.hidden_size": 32, "model.num_hidden_layers": 1, "model.num_attention_heads": 2,
            "model.intermediate_size": 64, "model.max_position_embeddings": 64, "model.alibi_starting_size": 64,
            "model.hidden_dropout_prob": 0.1, "tokenizer.vocab_size": 512, "data.train_files": docs,
            "data.max_seq_len": 48, "data.num_workers": 0, "data.cache_dir": tmp_path / "cache",
            "data.valid_fraction": 0.1, "train.global_batch_size": 16, "train.microbatch_size": 8,
            "train.max_duration": "4ba", "train.compile": "false", "train.eval_samples": 0, "train.log_interval": 1,
            "train.checkpoint_interval": 4, "train.output_dir": tmp_path / out, "train.trackers": "none",
            "train.fill_mask_example": "null", **overrides}
    return load_recipe(None, [f"{k}={v}" for k, v in args.items()])


def _losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _run(tmp_path, name, graphs, monkeypatch):
    """4 steps of the tiny recipe on CPU, the trainer's graph switch forced."""
    monkeypatch.setattr(trainer_module, "use_cuda_graphs", lambda *a: graphs)
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    t = trainer_module.Trainer(_recipe(tmp_path, name))
    grads = []
    step_fn = t.train_step

    def step(step, microbatches):
        lr = step_fn(step, microbatches)
        grads.append([p.grad for p in t.model.parameters()])   # what zero_grad left after the optimizer step
        return lr

    t.train_step = step
    t.fit()
    return _losses(tmp_path / name), grads, len(marks), t


def test_in_place_accumulation_trains_exactly_as_set_to_none(tmp_path, monkeypatch):
    base, base_grads, base_marks, _ = _run(tmp_path, "plain", False, monkeypatch)
    graphs, graph_grads, marks, t = _run(tmp_path, "graphs", True, monkeypatch)
    assert len(base) == 4 and graphs == base            # bitwise: 0 + g is g, and each step starts from zeros
    assert base_marks == 0 and marks == 4 * 2           # one graph step per microbatch
    assert all(g is None for g in base_grads[-1])       # the usual way frees them
    assert all(g is not None and not g.any() for g in graph_grads[-1])   # kept, zeroed in place
    assert "CUDA graphs" in t.describe()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_trainer_with_cuda_graphs_matches_without_on_gpu(tmp_path):
    """The real thing: compiled on CUDA (bf16 autocast as the recipes run, no dropout), microbatch 8 x accumulation
    4, with and without CUDA graphs: the same losses step by step. Were a graph's output installed as .grad and
    overwritten by the next replay, each step would follow only its last microbatch and the losses would part after
    the first step."""
    losses = {}
    for graphs in (False, True):
        torch._dynamo.reset()
        t = trainer_module.Trainer(_recipe(
            tmp_path, f"run-{graphs}", **{"model.hidden_size": 64, "model.num_hidden_layers": 2,
                                          "model.intermediate_size": 128, "model.hidden_dropout_prob": 0.0,
                                          "train.global_batch_size": 32, "train.max_duration": "6ba",
                                          "train.compile": "true", "train.cuda_graphs": str(graphs).lower(),
                                          "train.checkpoint_interval": 6}))
        assert t.cuda_graphs is graphs
        t.fit()
        losses[graphs] = _losses(tmp_path / f"run-{graphs}")
    assert len(losses[True]) == 6
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-4)   # before any update: the same forward
    assert losses[True] == pytest.approx(losses[False], rel=1e-3), losses
    assert losses[False][-1] < losses[False][0] - 0.05                     # it trains: the updates matter
