"""What a run reports: per-window reductions (loss, tokens/s, samples/s, TFLOP/s, MFU) over processes, the
``metrics.jsonl`` log, experiment trackers, the progress bar, and the loss-curve plot."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Optional

import torch

from .flops import peak_flops


class MetricsLog:
    """``metrics.jsonl``, one record per line (written by the main process only). On resume, records after the
    resumed step are dropped, so the log reads like a straight run."""

    def __init__(self, path: Path, enabled: bool, start_step: int):
        self.path, self.enabled = Path(path), enabled
        self.records: list[dict] = []
        if enabled and self.path.exists() and start_step > 0:
            recs = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.records = [r for r in recs if r.get("step", 0) <= start_step]
        if enabled:
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def log(self, rec: dict):
        if self.enabled:
            self.records.append(rec)
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def evals(self) -> list[dict]:
        return [r for r in self.records if "eval_loss" in r]


class ThroughputWindow:
    """Sums over the optimizer steps since the last report, reduced over processes once per report (one sync)."""

    def __init__(self, device, num_processes: int, peak_flops: Optional[float]):
        self.device, self.num_processes, self.peak = device, num_processes, peak_flops
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.train_time = 0.0
        self.reset()

    def reset(self):
        self.loss.zero_()
        self.steps, self.tokens, self.flops, self.samples = 0, 0, 0.0, 0
        self.data_wait = 0.0
        self.t0, self.paused_at = time.perf_counter(), None

    def timed(self, loader):
        """Iterate ``loader``, adding the seconds spent waiting for each item to the window (``data_wait``): a
        training loop that waits for its data shows it in the record's ``data_wait_frac``."""
        it = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.data_wait += time.perf_counter() - t
            yield item

    @contextlib.contextmanager
    def paused(self):
        """Leave evaluation and checkpointing out of the throughput and of the training clock."""
        self.paused_at = time.perf_counter()
        try:
            yield
        finally:
            self.t0 += time.perf_counter() - self.paused_at
            self.paused_at = None

    def elapsed(self) -> float:
        """Training seconds so far (pauses left out): the clock of loss-vs-time curves."""
        now = self.paused_at if self.paused_at is not None else time.perf_counter()
        return self.train_time + (now - self.t0)

    def add_microbatch(self, tokens: int, samples: int, flops: float):
        self.tokens, self.samples, self.flops = self.tokens + tokens, self.samples + samples, self.flops + flops

    def add_step(self, loss: torch.Tensor):
        self.loss += loss.double()
        self.steps += 1

    def reduce(self, accelerator, step: int, lr: float) -> dict:
        """The window's record (loss averaged over steps and processes; rates over the wall time); then reset."""
        local = [self.loss] + [torch.tensor(float(x), device=self.device, dtype=torch.float64)
                               for x in (self.tokens, self.flops, self.samples)]
        loss, tokens, flops, samples = accelerator.reduce(torch.stack(local), reduction="sum").tolist()
        dt = time.perf_counter() - self.t0
        self.train_time += dt
        rec = {"step": step, "loss": loss / (self.steps * self.num_processes), "lr": lr, "tokens_per_s": tokens / dt,
               "samples_per_s": samples / dt, "tflops_per_s": flops / dt / 1e12, "tokens": int(tokens),
               "samples": int(samples)}
        if self.peak:
            rec["mfu"] = flops / dt / (self.peak * self.num_processes)
        rec["data_wait_frac"] = self.data_wait / dt   # this process's share of the window spent waiting for data
        self.reset()
        return rec


def eval_message(rec: dict) -> str:
    return (f"[eval] step {rec['step']}: held-out MLM loss {rec['eval_loss']:.4f}, masked accuracy "
            f"{rec['eval_accuracy']:.4f} ({rec['eval_masked_tokens']} masked tokens)")


def resolve_trackers(spec: Optional[str]) -> list[str]:
    """``auto``: tensorboard when installed; ``none``; or a comma list of Accelerate trackers."""
    if spec == "auto":
        try:
            import tensorboard  # noqa: F401
            return ["tensorboard"]
        except ImportError:
            return []
    if spec in ("none", "", None):
        return []
    return [t.strip() for t in spec.split(",")]


def tracker_values(rec: dict) -> dict:
    """A jsonl record as tracker scalars."""
    names = {"loss": "train/loss", "lr": "train/lr", "tokens_per_s": "perf/tokens_per_s", "mfu": "perf/mfu",
             "data_wait_frac": "perf/data_wait_frac",
             "eval_loss": "eval/loss", "eval_accuracy": "eval/accuracy"}
    return {tag: rec[k] for k, tag in names.items() if k in rec}


class ProgressBar:
    """A tqdm bar on the main process that shows the last window's loss, lr, tokens/s and MFU; messages printed
    while it is open go above it."""

    def __init__(self, total: int, initial: int, enabled: bool):
        from tqdm.auto import tqdm
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, desc="pretrain", dynamic_ncols=True,
                        mininterval=2.0)

    def update(self, rec: Optional[dict] = None):
        self.bar.update(1)
        if rec is not None:
            extra = {"mfu": f"{rec['mfu']:.1%}"} if "mfu" in rec else {}
            self.bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}", tok_s=f"{rec['tokens_per_s']:,.0f}",
                                 **extra)

    def write(self, msg: str):
        if self.enabled:
            self.bar.write(msg)

    def close(self):
        self.bar.close()


class Reporter:
    """Where a run's records go: ``metrics.jsonl``, the trackers, and the console (above the progress bar while it
    is open). Owns the throughput window of the steps since the last report."""

    def __init__(self, accelerator, path: Path, start_step: int, say):
        self.acc, self.say, self.progress = accelerator, say, None
        self.log = MetricsLog(path, accelerator.is_main_process, start_step)
        self.window = ThroughputWindow(accelerator.device, accelerator.num_processes, peak_flops(accelerator.device))

    def record(self, rec: dict, msg: Optional[str] = None):
        self.log.log(rec)
        self.acc.log(tracker_values(rec), step=rec["step"])
        if msg and self.progress is not None:
            self.progress.write(msg)
        elif msg:
            self.say(msg)

    def start(self, total_steps: int, step: int):
        self.progress = ProgressBar(total_steps, step, self.acc.is_main_process)
        self.window.reset()

    def step_done(self, state, lr: float, report: bool):
        """Advance the bar; when ``report``, reduce the window into a record (tokens/s, MFU, ...) and log it."""
        rec = state.count_window(self.window.reduce(self.acc, state.step, lr)) if report else None
        if rec is not None:
            self.record(rec)
        self.progress.update(rec)

    def close(self):
        if self.progress is not None:
            self.progress.close()
            self.progress = None


def plot_curve(records: list[dict], path: Path, title: str) -> Optional[Path]:
    """Train loss and held-out loss / accuracy against steps (skipped without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tr = [(r["step"], r["loss"]) for r in records if "loss" in r]
    ev = [(r["step"], r["eval_loss"], r["eval_accuracy"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    if tr:
        ax[0].plot(*zip(*tr), label="train MLM loss", lw=1)
    if ev:
        ax[0].plot([e[0] for e in ev], [e[1] for e in ev], "o-", label="held-out MLM loss (15% masking)")
        ax[1].plot([e[0] for e in ev], [e[2] for e in ev], "o-", color="C2")
    ax[0].set_xlabel("step"); ax[0].set_ylabel("loss"); ax[0].grid(alpha=0.3)
    if tr or ev:
        ax[0].legend()
    ax[1].set_xlabel("step"); ax[1].set_ylabel("held-out masked accuracy"); ax[1].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
