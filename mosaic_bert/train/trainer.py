"""The pretraining loop: a `Trainer` builds everything from a recipe in ``__init__`` (each builder reads its own
section), and ``fit()`` reads as three verbs per step: ``train_step``, ``evaluate``, ``save``.

Exactness of resume: the data order is a pure function of (seed, epoch), masks of (seed, global sample index), and
torch's RNG is reseeded from (seed, step, microbatch) before every microbatch, so a resumed run (or a run on another
number of processes with the same global batch) computes the same thing as a straight one.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time

import torch
from accelerate.utils import set_seed

from .checkpoint import CheckpointManager
from .config import Recipe, check_batch, duration_to_steps, validate
from .data import BatchPlan, StreamingTrainLoader, TrainLoader, build_data, eval_batches
from .export import export_run, result_message
from .flops import model_flop_params, step_flops
from .masking import MLMMasker
from .metrics import Reporter, eval_message
from .model import model_family
from .optim import build_training_optimization
from .runlock import lock_run
from .runtime import (StopOnSignal, build_accelerator, init_trackers, keep_grads_allocated, main_process_printer,
                      resolve_precision, mark_dynamic_inputs, seed_microbatch, use_compile, use_cuda_graphs)
from .state import TrainState


class Trainer:
    """``Trainer(recipe, resume=None | "latest" | PATH, callbacks=[Callback, ...], overwrite=False).fit()`` -> the
    run's summary. A new run (no ``resume``) refuses a folder that holds an earlier run unless ``overwrite``, which
    moves that run aside."""

    def __init__(self, recipe: Recipe, resume=None, callbacks=(), overwrite: bool = False):
        validate(recipe)   # a recipe built in code gets the same checks as a loaded one
        self.recipe, self.callbacks, self.t_start = recipe, list(callbacks), time.time()
        self.acc = build_accelerator(recipe.train)
        self.say = main_process_printer(self.acc)
        self.lock = lock_run(recipe.train.output_dir, self.acc)   # held until fit() ends: one run per folder
        try:
            self._build(resume, overwrite)
        except BaseException:
            self.close()
            raise

    def close(self):
        """Release the output folder's lock (fit() does when it ends or fails)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _build(self, resume, overwrite: bool):
        recipe, acc, t = self.recipe, self.acc, self.recipe.train
        self.plan = BatchPlan(t.seed, t.global_batch_size, t.microbatch_size, check_batch(recipe, acc.num_processes),
                              acc.num_processes, acc.process_index)
        self.checkpoints = CheckpointManager(t.output_dir, acc, t.keep_checkpoints)
        ckpt = self.checkpoints.find(resume)
        resumed = self.checkpoints.check_compatible(ckpt, recipe) if ckpt else None
        if ckpt is None:
            self.checkpoints.start_fresh(overwrite, self.say)
        elif not self.checkpoints.owns(ckpt):
            self.checkpoints.adopt(ckpt)
        self.data = data = build_data(recipe.data, recipe.tokenizer, acc, log=self.say)
        total = duration_to_steps(t.max_duration, t.global_batch_size, data.meta["train"]["mean_tokens_per_row"])
        self.family = model_family(recipe.model.family)
        set_seed(t.seed)
        model = self.family.build(recipe.model, len(data.tokenizer), data.tokenizer.pad_token_id).to(acc.device)
        optimizer, self.scheduler, self.warmup = build_training_optimization(model, t, total)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.checkpoints.track(self.model, self.optimizer, self.scheduler)
        compiled = use_compile(t.compile, acc.device)
        # CUDA graphs replay a microbatch's kernels in one launch; gradients then stay allocated (accumulated in place)
        self.cuda_graphs = use_cuda_graphs(t.cuda_graphs, acc.device, compiled, acc.num_processes)
        if self.cuda_graphs:
            keep_grads_allocated(self.model)
        self.forward = (torch.compile(self.model, mode="reduce-overhead" if self.cuda_graphs else None) if compiled
                        else self.model)
        self.masker = MLMMasker.from_tokenizer(data.tokenizer, t.mlm_probability, t.seed)
        self.eval_masker = MLMMasker.from_tokenizer(data.tokenizer, t.eval_mlm_probability, t.seed + 7919)
        if recipe.data.streaming:   # tokenized as read, one pass (data/streaming.py); same loader contract
            self.loader = StreamingTrainLoader(data.stream, data.tokenizer, self.masker, self.plan, total,
                                               recipe.data.max_seq_len, text_column=recipe.data.text_column,
                                               num_workers=recipe.data.num_workers,
                                               pin_memory=acc.device.type == "cuda",
                                               layout=self.family.sync_free_layout if compiled else None,
                                               stats=self.family.batch_stats)
        else:
            self.loader = TrainLoader(data.train, self.masker, self.plan, total, recipe.data.num_workers,
                                      pin_memory=acc.device.type == "cuda",
                                      layout=self.family.sync_free_layout if compiled else None,
                                      stats=self.family.batch_stats)
        # what runs, said once at the start: the fast path is the compiled model fed by the loader's layout
        self.path = ("compiled, sync-free bucketed inputs" if compiled and self.loader.layout is not None
                     else "compiled" if compiled else "eager") + (", CUDA graphs" if self.cuda_graphs else "")
        # the bucketed sizes, marked dynamic on every microbatch: one compiled graph for all buckets
        self.dynamic_inputs = self.family.dynamic_inputs if self.loader.layout is not None else ()
        self.state = TrainState(self.loader, total)
        if ckpt:
            self.checkpoints.load(ckpt)
            self.state.load_state_dict(resumed)
            self.say(f"[pretrain] resumed from {ckpt} at step {self.state.step}")
        init_trackers(acc, recipe)
        self.reporter = Reporter(acc, self.checkpoints.out_dir / "metrics.jsonl", self.state.step, self.say)
        unwrapped = acc.unwrap_model(self.model)
        self.flop_params = (*model_flop_params(unwrapped), unwrapped.config.num_hidden_layers)  # N, hidden, vocab, L
        self.say(self.describe())

    def describe(self) -> str:
        r, t, P = self.recipe, self.recipe.train, self.acc.num_processes
        n = sum(p.numel() for p in self.model.parameters())
        rows = "streamed" if r.data.streaming else f"{self.data.meta['train']['rows']:,}"
        return (f"[pretrain] {r.name}: {r.model.family} model, {n / 1e6:.1f}M params (vocab {self.flop_params[2]}, "
                f"tokenizer {len(self.data.tokenizer)}), {rows} train rows of <= "
                f"{r.data.max_seq_len} tokens, {self.state.total_steps} steps x global batch {t.global_batch_size} (= "
                f"microbatch {t.microbatch_size} x accumulation {self.plan.accum} x {P} process(es)), warmup "
                f"{self.warmup}, lr {t.lr}, masking {t.mlm_probability}, precision {resolve_precision(t.mixed_precision)}, "
                f"device {self.acc.device}, {self.path}")

    def train_step(self, step: int, microbatches: list[dict]) -> float:
        """One optimizer step over this process's microbatches (gradients synced on the last); returns the lr used."""
        acc, n = self.acc, len(microbatches)
        step_loss = torch.zeros((), device=acc.device, dtype=torch.float32)
        for a, batch in enumerate(microbatches):
            tokens, attn_sq, head = batch.pop("_flop_stats")   # the loader's (its workers'): family.batch_stats
            flops = step_flops(*self.flop_params, tokens, attn_sq, head)
            self.reporter.window.add_microbatch(tokens, batch["input_ids"].shape[0], flops)
            batch = {k: v.to(acc.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            mark_dynamic_inputs(batch, self.dynamic_inputs)
            seed_microbatch(self.plan.seed, step, self.plan.micro_index(a))
            sync = a == n - 1 or self.plan.num_processes == 1
            if self.cuda_graphs:   # a new replay: the previous microbatch's graph outputs are no longer read
                torch.compiler.cudagraph_mark_step_begin()
            with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                with acc.autocast():
                    out = self.forward(**batch, return_dict=True)
                loss = out.loss / n
                acc.backward(loss)
            step_loss += loss.detach().float()
        if self.recipe.train.grad_clip_norm:
            acc.clip_grad_norm_(self.model.parameters(), self.recipe.train.grad_clip_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=not self.cuda_graphs)
        self.reporter.window.add_step(step_loss)
        return lr

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Held-out MLM loss and masked accuracy on fixed batches and masks, summed over processes; None (nothing
        recorded) with ``train.eval_samples=0`` or when the batches hold no masked token."""
        acc, t = self.acc, self.recipe.train
        if t.eval_samples == 0:
            return None
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=acc.device)  # loss * n, correct, n
        for batch in eval_batches(self.data.valid, self.eval_masker, t.eval_samples, t.microbatch_size,
                                  acc.num_processes, acc.process_index):
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            selected = batch["labels"] != -100
            n = int(selected.sum())
            if n == 0:
                continue
            with acc.autocast():
                out = self.model(**batch, return_dict=True)
            correct = (self.family.masked_logits(out.logits, selected).argmax(-1) == batch["labels"][selected]).sum()
            sums += torch.stack([out.loss.double() * n, correct.double(), sums.new_tensor(float(n))])
        loss, correct, n = acc.reduce(sums, reduction="sum").tolist()
        self.model.train()
        if n == 0:
            self.say(f"[pretrain] step {self.state.step}: the held-out batches hold no masked token; nothing recorded")
            return None
        rec = {"step": self.state.step, "eval_loss": loss / max(n, 1.0), "eval_accuracy": correct / max(n, 1.0),
               "eval_masked_tokens": int(n), "train_seconds": self.reporter.window.elapsed() if self.state.step else 0.0}
        self.reporter.record(rec, eval_message(rec))
        return rec

    def save(self):
        self.checkpoints.save(self.state.step, self.recipe, self.state.state_dict())

    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict:
        t, state = self.recipe.train, self.state
        due = lambda every: state.step % every == 0 or state.step == state.total_steps
        with StopOnSignal() as stop:
            if state.step == 0:
                self.evaluate()
            self.reporter.start(state.total_steps, state.step)
            self.model.train()
            for step, microbatches in self.reporter.window.timed(self.loader):
                lr = self.train_step(step, microbatches)
                state.step = step + 1
                self.reporter.step_done(state, lr, report=due(t.log_interval))
                for verb, every in ((self.evaluate, t.eval_interval), (self.save, t.checkpoint_interval)):
                    if due(every):
                        with self.reporter.window.paused():
                            verb()
                for cb in self.callbacks:
                    cb.on_step_end(self)
                if stop.requested(self.acc) and state.step < state.total_steps:
                    return self.stop_early(stop.signum, saved=due(t.checkpoint_interval))
            if state.step < state.total_steps:   # a stream (data.streaming=true) read to its end: one pass
                self.say(f"[pretrain] the train data ended after step {state.step} of {state.total_steps} (a stream is "
                         f"read once); finishing here")
            self.reporter.close()
            return self.finish()

    def stop_early(self, signum, saved: bool) -> dict:
        """After SIGTERM/SIGINT: a checkpoint of this step (unless one was just written) and a summary that says
        how to continue; the CLI exits with ``exit_code`` (128 + the signal)."""
        if not saved:
            self.save()
        self.reporter.close()
        self.acc.end_training()
        ckpt = self.checkpoints.root / f"step_{self.state.step:07d}"
        name = signal.Signals(signum).name if signum else "a signal (on another process)"
        if self.acc.is_main_process:
            print(f"[pretrain] stopped by {name} after step {self.state.step} of {self.state.total_steps}; checkpoint "
                  f"{ckpt}. Continue with the same command plus --resume.", file=sys.stderr, flush=True)
        return {"stopped_by": name, "exit_code": 128 + int(signum or signal.SIGTERM), "steps": self.state.step,
                "checkpoint": str(ckpt), "output_dir": str(self.checkpoints.out_dir)}

    def finish(self) -> dict:
        """Export the HF folder (weights, remote code, tokenizer, model card) and return the run's summary."""
        acc, evals, out_dir = self.acc, self.reporter.log.evals(), self.checkpoints.out_dir
        acc.wait_for_everyone()
        summary = {"steps": self.state.step, "total_steps": self.state.total_steps,
                   "first_eval": evals[0] if evals else None, "last_eval": evals[-1] if evals else None,
                   "params": sum(p.numel() for p in self.model.parameters()), "vocab_size": self.flop_params[2],
                   "precision": resolve_precision(self.recipe.train.mixed_precision), "num_processes": acc.num_processes,
                   "train_time_s": self.reporter.window.train_time, "wall_time_s": time.time() - self.t_start,
                   "tokens_seen": self.state.tokens_seen, "samples_seen": self.state.samples_seen, "data": self.data.meta,
                   "output_dir": str(out_dir)}
        if acc.is_main_process:
            export_run(out_dir, acc.unwrap_model(self.model), self.data.tokenizer, self.recipe, summary,
                       self.reporter.log.records)
            self.say(result_message(summary))
            self.say(f"[pretrain] saved model, tokenizer and model card to {out_dir}")
        acc.wait_for_everyone()
        acc.end_training()
        return summary
