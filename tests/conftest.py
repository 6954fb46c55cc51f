"""Shared test helpers. Tests never need ../shared: the fixtures they use are copied into tests/fixtures/."""

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
ORIGINAL_TINY = FIXTURES / "original_tiny"          # the original implementation's tensors at init scale
ORIGINAL_SCALED = FIXTURES / "original_scaled"      # ... with weights at init range 0.2 (O(1) activations, all grads)
BERT_TOKENIZER = FIXTURES / "bert-base-uncased"

# Keep the CPU suite predictable on small machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny_config(**overrides):
    from mosaic_bert import BertConfig

    kw = dict(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        alibi_starting_size=64,
    )
    kw.update(overrides)
    return BertConfig(**kw)


def perturb_(model, seed=0):
    """Move biases and LayerNorm parameters off their init values so that they are exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "layernorm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def ragged_batch(lengths, seed=0, extra_cols=1):
    """A padded batch of random ids with rows of `lengths` real tokens (+ `extra_cols` padding columns past the
    longest): ids, 0/1 mask, MLM labels at ~40 % of the real tokens, token types (0 before column 3, 1 after) and
    cu_seqlens (int32)."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths) + extra_cols
    ids = torch.zeros(len(lengths), L, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, 128, (n,), generator=g)
        mask[i, :n] = 1
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.4) & mask.bool(), ids, -100)
    types = (torch.arange(L)[None] >= 3).long() * mask
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    return ids, mask, labels, types, cu


# ----------------------------------------------------------------------------------------------------------------------
# CI guard: `pytest --min-passed N` fails the session when fewer than N tests passed (a run where nothing was collected,
# or where everything skipped, would otherwise exit 0). Off by default, so running a GPU-only file on a CPU still skips.


def pytest_addoption(parser):
    parser.addoption("--min-passed", type=int, default=0, metavar="N",
                     help="fail the session unless at least N tests passed (CI: catches a run where everything skipped)")


def pytest_sessionfinish(session, exitstatus):
    need = session.config.getoption("--min-passed")
    if not need or exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len([r for r in reporter.stats.get("passed", []) if r.when == "call"]) if reporter else 0
    if passed < need:
        skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
        print(f"\n--min-passed={need}: only {passed} test(s) passed ({skipped} skipped): failing the session",
              flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
