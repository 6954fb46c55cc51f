"""The process a run lives in: Accelerate (devices, processes, precision, trackers), per-microbatch seeding,
printing from the main process only, and stopping cleanly on SIGTERM / SIGINT."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Optional

import torch

from .. import errors
from .metrics import resolve_trackers


def resolve_precision(mixed_precision: str) -> str:
    """``auto``: bf16 on a GPU, fp32 ("no") on CPU."""
    if mixed_precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return mixed_precision


WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

HOW_TO_LAUNCH_ON_CPU = ("on a machine without GPUs, start N CPU processes (gloo) with `accelerate launch "
                        "--multi_gpu --num_processes N scripts/pretrain.py ...` or `torchrun --nproc_per_node N "
                        "scripts/pretrain.py ...`")


def launched_world_size() -> int:
    """How many processes the launcher started (torchrun / ``accelerate launch --multi_gpu`` / mpirun), 1 if none."""
    for var in WORLD_SIZE_VARS:
        if os.environ.get(var, "").strip():
            return int(os.environ[var])
    return 1


def check_launch():
    """Refuse a launch that would not train as the user asked. ``accelerate launch --num_processes N`` (N > 1) without
    ``--multi_gpu`` (with or without ``--cpu``) starts ONE process: Accelerate's simple launcher then sets
    MASTER_ADDR/MASTER_PORT for the group it expected but no world size."""
    if (os.environ.get("ACCELERATE_USE_CPU") is not None and os.environ.get("MASTER_ADDR")
            and launched_world_size() == 1 and "LOCAL_RANK" not in os.environ):
        raise errors.RecipeError(
            "`accelerate launch --num_processes N` without `--multi_gpu` started a single process, not N: Accelerate "
            "runs several processes of one machine only through `--multi_gpu` (or mpirun). To train on several "
            f"processes, {HOW_TO_LAUNCH_ON_CPU}; for one process, drop --num_processes (or pass --num_processes 1).")


def _settle_after_end_training(accelerator):
    """With several processes (gloo), give the process group's worker threads a moment, with the GIL released, to
    free the last collectives. Otherwise the group's destructor (when the wrapped model is freed right after) may
    join a worker thread that is waiting for the GIL the destructor holds: a rare deadlock at the end of a CPU run,
    seen under load (main thread in ~ProcessGroupGloo -> thread::join, a pt_gloo_runloop thread in
    ~AsyncBarrierWork -> decref of a Python-owned tensor -> take_gil)."""
    if accelerator.num_processes > 1 and accelerator.device.type == "cpu":
        import time
        time.sleep(0.2)


def build_accelerator(train_cfg):
    """An Accelerator for the train section (precision, trackers, project folder = output_dir). Launched as several
    processes on a machine without CUDA, the processes form one gloo group on the CPU (Accelerate left alone would
    make each of them an independent one-process run writing the same folder)."""
    from accelerate import Accelerator
    check_launch()
    world = launched_world_size()
    cpu_group = world > 1 and not torch.cuda.is_available()
    trackers = resolve_trackers(train_cfg.trackers)
    acc = Accelerator(mixed_precision=resolve_precision(train_cfg.mixed_precision), log_with=trackers or None,
                      project_dir=str(train_cfg.output_dir), cpu=cpu_group)
    end_training = acc.end_training

    def end_training_and_settle():
        end_training()
        _settle_after_end_training(acc)

    acc.end_training = end_training_and_settle
    if acc.num_processes != world:
        raise errors.RecipeError(
            f"the launcher started {world} processes but they did not form one group (Accelerate sees "
            f"{acc.num_processes}): each would train alone and write the same output folder. On GPUs, launch with one "
            f"process per GPU; {HOW_TO_LAUNCH_ON_CPU}.")
    return acc


def init_trackers(accelerator, recipe):
    """Start the trackers, with the flattened recipe as their run config (main process)."""
    if not accelerator.log_with:
        return
    flat = {f"{s}.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
            for s, sec in recipe.to_dict().items() if isinstance(sec, dict) for k, v in sec.items()}
    accelerator.init_trackers(recipe.name.replace("/", "_"), config=flat if accelerator.is_main_process else None)


def seed_microbatch(seed: int, step: int, micro_index: int):
    """Reseed torch (dropout) from (seed, step, microbatch): a resumed or re-sharded run draws the same numbers."""
    s = (int(seed) * 1_000_003 + step * 4099 + micro_index) % (2**63 - 1)
    # the generators dropout draws from, as torch.manual_seed seeds them, without its calls for device kinds that are
    # not initialised (each records a stack trace, every microbatch)
    torch.default_generator.manual_seed(s)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(s)
    if torch.backends.mps.is_available():
        torch.mps.manual_seed(s)


def mark_dynamic_inputs(batch: dict, names) -> dict:
    """Mark dim 0 of the inputs ``names`` (the bucketed sizes that change from microbatch to microbatch) dynamic
    before a compiled call, so the first compile is the one graph for every bucket. Unmarked, Dynamo compiles a graph
    specialised to the first microbatch's sizes, then one more each time another of these inputs first changes size
    (automatic dynamic shapes): 2-3 full compiles of forward and backward early in the run instead of one."""
    for name in names:
        t = batch.get(name)
        if torch.is_tensor(t):
            torch._dynamo.maybe_mark_dynamic(t, 0)
    return batch


def main_process_printer(accelerator):
    def say(*args):
        if accelerator.is_main_process:
            print(*args, flush=True)
    return say


class StopOnSignal:
    """SIGTERM / SIGINT while training (``with StopOnSignal(): ...``): the first asks the loop to save a checkpoint
    at the next step boundary and stop (the CLI then exits with 128 + the signal: 143 for SIGTERM, 130 for SIGINT);
    a second one exits at once with that status, without a checkpoint. Handlers are restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum, self.previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is not None:
            print(f"[pretrain] second signal ({name}): exiting now, without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(f"[pretrain] {name} received: saving a checkpoint at the end of this step, then stopping (send it "
              f"again to exit at once)", file=sys.stderr, flush=True)

    def requested(self, accelerator) -> bool:
        """Whether any process got a signal (all processes agree, so they stop at the same step)."""
        flag = self.signum is not None
        if accelerator.num_processes > 1:
            t = torch.tensor([float(flag)], device=accelerator.device)
            flag = bool(accelerator.reduce(t, reduction="sum").item() > 0)
        return flag


def raise_on_every_process(accelerator, error: Optional[Exception]):
    """Raise ``error`` (found by the main process, e.g. the folder is locked or the disk is full) on every process,
    so that none waits forever for the others."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list
        sent = broadcast_object_list([(type(error).__name__, str(error)) if error is not None else None])[0]
        error = getattr(errors, sent[0], errors.MosaicBertError)(sent[1]) if sent else None
    if error is not None:
        raise error


def use_cuda_graphs(setting: bool, device, compiled: bool, num_processes: int) -> bool:
    """``train.cuda_graphs``: true is refused where CUDA graphs cannot run here (not compiled, not CUDA, several
    processes: DDP's gradient hooks are not captured)."""
    if setting and not (compiled and device.type == "cuda" and num_processes == 1):
        why = ("the model is not compiled (train.compile=false)" if not compiled
               else f"the device is {device.type}, not CUDA" if device.type != "cuda"
               else f"the run has {num_processes} processes (CUDA graphs run on one process here)")
        raise errors.RecipeError(f"train.cuda_graphs=true cannot run: {why}. Leave it false (the default).")
    return bool(setting)


def keep_grads_allocated(model) -> None:
    """For CUDA graphs (torch.compile mode "reduce-overhead"): every trainable parameter gets a zero gradient that
    stays allocated (then clear it with ``zero_grad(set_to_none=False)``), so backward accumulates into it in place.
    Otherwise autograd installs a graph's output buffer as ``.grad`` and the next replay overwrites it: gradient
    accumulation would silently keep only the last microbatch (pytorch/pytorch#169545)."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)


def use_compile(setting, device) -> bool:
    """``train.compile``: true / false, or "auto" = compile on CUDA (the fast path; on the CPU compiling costs more
    than it saves in a short run)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)
