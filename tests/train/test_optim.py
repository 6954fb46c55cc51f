"""The paper's optimizer and schedule: decoupled AdamW and linear warmup / decay to 0.02x."""

import pytest
import torch

from mosaic_bert.train.optim import DecoupledAdamW, build_optimizer, build_scheduler, linear_warmup_decay, param_groups


def _lrs(total=1000, warmup=60, lr=5e-4, alpha_f=0.02):
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = DecoupledAdamW([p], lr=lr)
    sch = build_scheduler(opt, warmup, total, alpha_f)
    lrs = [sch.get_last_lr()[0]]
    for _ in range(total):
        opt.step()
        sch.step()
        lrs.append(sch.get_last_lr()[0])
    return lrs


def test_schedule_values():
    lrs = _lrs()
    assert lrs[0] == 0.0
    assert lrs[30] == pytest.approx(2.5e-4)                 # half-way through warmup
    assert lrs[60] == pytest.approx(5e-4)                   # warmup end (6% of 1000)
    assert lrs[530] == pytest.approx(5e-4 * (1 + 0.02) / 2)  # mid-decay
    assert lrs[1000] == pytest.approx(0.02 * 5e-4)          # end: 0.02x
    assert max(lrs) == pytest.approx(5e-4)
    f = linear_warmup_decay(60, 1000, 0.02)
    assert f(5000) == pytest.approx(0.02)                   # clamps after the end


def test_decoupled_weight_decay_step():
    """w <- w * (1 - wd * lr_t / lr_0) before Adam; zero gradients give a zero Adam update, isolating the decay."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    opt = build_optimizer(model, lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    sch = build_scheduler(opt, warmup_steps=2, total_steps=10)
    # step 0 uses lr 0 -> factor 1; step 1 uses lr_t = lr_0 / 2 -> factor 1 - 0.05
    for expected in (1.0, 1.0 - 0.1 * 0.5):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        sch.step()
        w0 = w0 * expected
        torch.testing.assert_close(model.weight.detach(), w0, rtol=0, atol=1e-7)
    torch.testing.assert_close(model.bias.detach(), b0)  # no decay on biases / LayerNorm (ndim < 2)


def test_decay_is_not_scaled_by_lr_value():
    """Unlike torch.optim.AdamW (w -= lr * wd * w), wd=1e-5 means a 1e-5 relative shrink per step at peak lr."""
    p = torch.nn.Parameter(torch.ones(2, 2))
    opt = DecoupledAdamW([{"params": [p], "weight_decay": 1e-5}], lr=5e-4)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert p.detach()[0, 0].item() == pytest.approx(1 - 1e-5, abs=2e-7)


def test_param_groups_and_state_roundtrip():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups = param_groups(model, 1e-5)
    assert len(groups[0]["params"]) == 2 and len(groups[1]["params"]) == 3
    opt = build_optimizer(model, 5e-4, (0.9, 0.98), 1e-6, 1e-5)
    sd = opt.state_dict()
    opt2 = build_optimizer(model, 5e-4, (0.9, 0.98), 1e-6, 1e-5)
    opt2.load_state_dict(sd)  # torch's own "decoupled_weight_decay" flag must not clobber our decay value
    assert [g["wd_decoupled"] for g in opt2.param_groups] == [1e-5, 0.0]
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
