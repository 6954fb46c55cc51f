"""The MosaicBERT optimizer and schedule.

* Decoupled AdamW (as Composer's ``DecoupledAdamW`` used by the paper): before each Adam update, the
  weights in decayed groups are multiplied by ``1 - wd * lr_t / lr_0``, i.e. the weight decay is
  scaled by the *schedule* but not by the learning-rate value (``wd = 1e-5`` means 1e-5 per step at
  peak lr, not lr*1e-5 as in ``torch.optim.AdamW``). The Adam update itself is torch's AdamW with its
  own weight decay set to 0 (fused / foreach kernels where available).
* Parameter groups: biases and LayerNorm weights (every parameter with ndim < 2) get no weight
  decay; the embeddings and all weight matrices are decayed.
* Schedule: linear warmup from 0 to ``lr`` over ``warmup`` steps, then linear decay to
  ``alpha_f * lr`` at the last step (Composer's ``LinearWithWarmupScheduler``, ``alpha_f = 0.02``).
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


class DecoupledAdamW(torch.optim.AdamW):
    def __init__(self, params, lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=1e-5, **kwargs):
        params = list(params)
        if params and isinstance(params[0], dict):
            groups = []
            for g in params:
                g = dict(g)
                g["wd_decoupled"] = g.pop("weight_decay", weight_decay)
                groups.append(g)
        else:
            groups = [{"params": params, "wd_decoupled": weight_decay}]
        super().__init__(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=0.0, **kwargs)
        for g in self.param_groups:
            g.setdefault("initial_lr", g["lr"])
            g["weight_decay"] = 0.0

    # NB: the per-group key is "wd_decoupled", not "decoupled_weight_decay": torch's Adam/AdamW already own a
    # boolean option of that name, which load_state_dict (e.g. inside accelerator.prepare) would put back.

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            wd = g.get("wd_decoupled", 0.0)
            if wd:
                factor = 1.0 - wd * g["lr"] / g["initial_lr"]
                ps = [p for p in g["params"] if p.grad is not None]
                if ps:
                    torch._foreach_mul_(ps, factor)
        return super().step(closure)


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay_bias_and_norm: bool = True):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if (no_decay_bias_and_norm and p.ndim < 2) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def linear_warmup_decay(warmup_steps: int, total_steps: int, alpha_f: float = 0.02):
    """Multiplier of the peak lr at optimizer step ``t`` (the lr used by the (t+1)-th update)."""
    def f(t: int) -> float:
        if warmup_steps > 0 and t < warmup_steps:
            return t / warmup_steps
        span = max(1, total_steps - warmup_steps)
        frac = min(1.0, (t - warmup_steps) / span)
        return 1.0 + (alpha_f - 1.0) * frac
    return f


def build_optimizer(model, lr, betas, eps, weight_decay, no_decay_bias_and_norm=True):
    kwargs = {}
    if next(model.parameters()).is_cuda:
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return DecoupledAdamW(param_groups(model, weight_decay, no_decay_bias_and_norm), lr=lr, betas=betas, eps=eps,
                          weight_decay=weight_decay, **kwargs)


def build_scheduler(optimizer, warmup_steps: int, total_steps: int, alpha_f: float = 0.02) -> LambdaLR:
    return LambdaLR(optimizer, linear_warmup_decay(warmup_steps, total_steps, alpha_f))


def build_training_optimization(model, train_cfg, total_steps: int):
    """-> (optimizer, scheduler, warmup steps) for a recipe's train section."""
    from .config import warmup_steps
    t = train_cfg
    warmup = warmup_steps(t.warmup, total_steps)
    optimizer = build_optimizer(model, t.lr, t.betas, t.eps, t.weight_decay, t.no_decay_bias_and_norm)
    return optimizer, build_scheduler(optimizer, warmup, total_steps, t.alpha_f), warmup
