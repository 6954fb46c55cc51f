"""The process a run lives in: Accelerate (devices, processes, precision, trackers), per-microbatch seeding, and
printing from the main process only."""

from __future__ import annotations

import torch

from .metrics import resolve_trackers


def resolve_precision(mixed_precision: str) -> str:
    """``auto``: bf16 on a GPU, fp32 ("no") on CPU."""
    if mixed_precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return mixed_precision


def build_accelerator(train_cfg):
    """An Accelerator for the train section (precision, trackers, project folder = output_dir)."""
    from accelerate import Accelerator
    trackers = resolve_trackers(train_cfg.trackers)
    return Accelerator(mixed_precision=resolve_precision(train_cfg.mixed_precision), log_with=trackers or None,
                       project_dir=str(train_cfg.output_dir))


def init_trackers(accelerator, recipe):
    """Start the trackers, with the flattened recipe as their run config (main process)."""
    if not accelerator.log_with:
        return
    flat = {f"{s}.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
            for s, sec in recipe.to_dict().items() if isinstance(sec, dict) for k, v in sec.items()}
    accelerator.init_trackers(recipe.name.replace("/", "_"), config=flat if accelerator.is_main_process else None)


def seed_microbatch(seed: int, step: int, micro_index: int):
    """Reseed torch (dropout) from (seed, step, microbatch): a resumed or re-sharded run draws the same numbers."""
    torch.manual_seed((int(seed) * 1_000_003 + step * 4099 + micro_index) % (2**63 - 1))


def main_process_printer(accelerator):
    def say(*args):
        if accelerator.is_main_process:
            print(*args, flush=True)
    return say
