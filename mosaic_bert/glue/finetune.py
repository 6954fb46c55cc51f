"""GLUE fine-tuning with the MosaicBERT paper's recipe, on ``transformers.Trainer``.

``run_glue(model, tasks, data_dir, output_dir)`` fine-tunes and evaluates any model that loads
with ``AutoModelForSequenceClassification.from_pretrained(..., trust_remote_code=True)`` (our
checkpoints and stock Hugging Face BERTs alike) and writes ``results.json`` and ``results.md``.

Recipe (per task numbers in ``mosaic_bert.glue.tasks.TASKS``): decoupled AdamW, betas (0.9, 0.98),
eps 1e-6, linear warmup over 6% of the steps then linear decay to 0, max length 256, dynamic
padding, bf16 autocast on GPU, evaluation after every epoch. RTE, MRPC and STS-B start from the
MNLI-fine-tuned checkpoint with a freshly initialised classifier.

Nothing in the model package imports this module.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict
from typing import Sequence

import torch

from ..train.optim import build_optimizer, build_scheduler
from .tasks import (
    MAX_SEQ_LENGTH,
    TASKS,
    GlueTask,
    aggregate_task,
    check_data_available,
    glue_score,
    load_task_data,
    resolve_tasks,
    task_metrics,
)

logger = logging.getLogger("mosaic_bert.glue")

BETAS = (0.9, 0.98)
EPS = 1e-6
WARMUP_FRACTION = 0.06


# ----------------------------------------------------------------------------------------
# optimizer and schedule
# ----------------------------------------------------------------------------------------
def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The pretraining optimizer (decoupled AdamW, betas (0.9, 0.98), eps 1e-6); as in the paper's fine-tuning
    code, one group: every parameter is decayed."""
    return build_optimizer(model, lr, BETAS, EPS, weight_decay, no_decay_bias_and_norm=False)


def make_scheduler(optimizer, total_steps: int, warmup_fraction: float = WARMUP_FRACTION):
    """Linear warmup over ``warmup_fraction`` of the steps, then linear decay to 0."""
    warmup = max(1, int(round(warmup_fraction * total_steps)))
    return build_scheduler(optimizer, warmup, total_steps, alpha_f=0.0)


# ----------------------------------------------------------------------------------------
# model loading
# ----------------------------------------------------------------------------------------
def _reinit_classifier(model) -> list[str]:
    """Re-initialise every parameter outside the encoder (``model.base_model_prefix``):
    the classification head, which must not carry over from MNLI. Returns the names."""
    prefix = getattr(model, "base_model_prefix", "bert")
    std = getattr(model.config, "initializer_range", 0.02)
    names = []
    for child_name, child in model.named_children():
        if child_name == prefix:
            continue
        for mod_name, mod in child.named_modules():
            if isinstance(mod, torch.nn.Linear):
                torch.nn.init.normal_(mod.weight, std=std)
                if mod.bias is not None:
                    torch.nn.init.zeros_(mod.bias)
            elif isinstance(mod, torch.nn.LayerNorm):
                torch.nn.init.ones_(mod.weight)
                torch.nn.init.zeros_(mod.bias)
            else:
                continue
            names.append(f"{child_name}.{mod_name}".rstrip("."))
    return names


def load_model(path: str, task: GlueTask, fresh_classifier: bool = False):
    from transformers import AutoModelForSequenceClassification

    kwargs = dict(
        num_labels=task.num_labels,
        problem_type=task.problem_type,  # explicit: an MNLI checkpoint says single_label
        trust_remote_code=True,
        dtype=torch.float32,  # master weights in fp32 even if the checkpoint is stored in 16 bit
    )
    if task.labels is not None:
        kwargs["id2label"] = dict(enumerate(task.labels))
        kwargs["label2id"] = {lab: i for i, lab in enumerate(task.labels)}
    else:
        kwargs["id2label"] = {0: "score"}
        kwargs["label2id"] = {"score": 0}
    model = AutoModelForSequenceClassification.from_pretrained(
        path, ignore_mismatched_sizes=True, **kwargs
    )
    if fresh_classifier:
        names = _reinit_classifier(model)
        logger.info("%s: re-initialised the classifier (%s) on top of %s", task.name, ", ".join(names), path)
    return model


# ----------------------------------------------------------------------------------------
# one fine-tuning run
# ----------------------------------------------------------------------------------------
def _tokenize(ds, tokenizer, max_length: int):
    pair = "text_b" in ds.column_names

    def fn(batch):
        args = (batch["text_a"], batch["text_b"]) if pair else (batch["text_a"],)
        return tokenizer(*args, truncation=True, max_length=max_length)

    out = ds.map(fn, batched=True, remove_columns=[c for c in ds.column_names if c != "label"],
                 desc="tokenizing")
    return out.rename_column("label", "labels")


def _subset(ds, n: int | None, seed: int):
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def finetune(
    task: GlueTask,
    model_path: str,
    train_ds,
    eval_sets: dict,
    tokenizer,
    output_dir: str,
    seed: int,
    *,
    epochs: int | None = None,
    fresh_classifier: bool = False,
    save_model_to: str | None = None,
    bf16: bool | None = None,
    max_length: int = MAX_SEQ_LENGTH,
    logging_steps: int = 50,
    max_grad_norm: float = 0.0,
) -> dict:
    """Fine-tune one seed; returns {"epochs": [{"epoch", "metrics"}...], "train_time_s", ...}."""
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed

    epochs = epochs or task.epochs
    set_seed(seed)
    model = load_model(model_path, task, fresh_classifier=fresh_classifier)
    train_tok = _tokenize(train_ds, tokenizer, max_length)
    eval_tok = {k: _tokenize(v, tokenizer, max_length) for k, v in eval_sets.items()}

    cuda = torch.cuda.is_available()
    if bf16 is None:
        bf16 = cuda and torch.cuda.is_bf16_supported()
    steps_per_epoch = math.ceil(len(train_tok) / task.batch_size)
    total_steps = steps_per_epoch * epochs
    optimizer = make_optimizer(model, task.lr, task.weight_decay)
    scheduler = make_scheduler(optimizer, total_steps)

    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=task.batch_size,
        per_device_eval_batch_size=max(64, task.batch_size),
        num_train_epochs=epochs,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=max(1, min(logging_steps, steps_per_epoch)),
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        use_cpu=not cuda,
        dataloader_num_workers=0,
        max_grad_norm=max_grad_norm,  # 0: no clipping (the paper's Composer runs did not clip)
    )

    evals: list[dict] = []

    class _Collect(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kw):
            # with a dict of eval sets Trainer evaluates (and calls this) once per split
            split_metrics = {}
            for k, v in (metrics or {}).items():
                for split in eval_tok:
                    pre = f"eval_{split}_"
                    if k.startswith(pre) and k[len(pre):] in task.metrics:
                        name = k[len(pre):] if len(eval_tok) == 1 else f"{split}_{k[len(pre):]}"
                        split_metrics[name] = float(v)
            ep = int(round(state.epoch or 0))
            if evals and evals[-1]["epoch"] == ep:
                evals[-1]["metrics"].update(split_metrics)
            else:
                evals.append({"epoch": ep, "metrics": split_metrics})
            logger.info("%s seed %d epoch %d: %s", task.name, seed, ep,
                        ", ".join(f"{k}={v:.2f}" for k, v in evals[-1]["metrics"].items()))

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_tok,
        eval_dataset=eval_tok,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=lambda p: task_metrics(task, p.predictions, p.label_ids),
        optimizers=(optimizer, scheduler),
        callbacks=[_Collect()],
    )
    t0 = time.time()
    trainer.train()
    train_time = time.time() - t0
    if save_model_to:
        trainer.save_model(save_model_to)
        tokenizer.save_pretrained(save_model_to)
    result = {
        "seed": seed,
        "epochs": evals,
        "train_examples": len(train_tok),
        "steps": trainer.state.global_step,
        "train_time_s": round(train_time, 1),
        "bf16": bool(bf16),
    }
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return result


# ----------------------------------------------------------------------------------------
# the whole benchmark
# ----------------------------------------------------------------------------------------
def run_glue(
    model: str,
    tasks: str | Sequence[str] = "all",
    data_dir: str = "hub",
    output_dir: str = "outputs/glue",
    *,
    tokenizer: str | None = None,
    seeds: Sequence[int] | None = None,
    num_seeds: int | None = None,
    epochs: int | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    mnli_checkpoint: str | None = None,
    bf16: bool | None = None,
    max_length: int = MAX_SEQ_LENGTH,
    keep_mnli_checkpoint: bool = True,
    max_grad_norm: float = 0.0,
    resume: bool = True,
) -> dict:
    """Fine-tune ``model`` on ``tasks`` and write ``results.json`` / ``results.md`` to ``output_dir``.

    ``seeds`` replaces every task's seed list, ``num_seeds`` truncates it, ``epochs`` overrides
    every task's epoch count (each override is recorded in the results). With ``resume``, tasks
    already in ``output_dir/results.json`` for the same model are kept and not run again."""
    from transformers import AutoTokenizer

    names = resolve_tasks(tasks)
    check_data_available(names, data_dir)
    os.makedirs(output_dir, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(tokenizer or model, use_fast=True)
    if not getattr(tok, "is_fast", False):
        logger.warning("tokenizer %s is not a fast tokenizer", tokenizer or model)

    results: dict = {
        "model": model,
        "tokenizer": tokenizer or model,
        "data_dir": data_dir,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "overrides": {k: v for k, v in dict(seeds=list(seeds) if seeds else None, num_seeds=num_seeds,
                                            epochs=epochs, max_train_samples=max_train_samples,
                                            max_eval_samples=max_eval_samples).items() if v is not None},
        "tasks": {},
    }
    old_path = os.path.join(output_dir, "results.json")
    if resume and os.path.isfile(old_path):
        with open(old_path) as fh:
            old = json.load(fh)
        if old.get("model") == model and old.get("overrides") == results["overrides"]:
            results["tasks"].update(old.get("tasks", {}))
            if results["tasks"]:
                logger.info("resuming %s: keeping finished tasks %s", old_path, ", ".join(results["tasks"]))
        else:
            logger.warning("%s is from another model or settings; overwriting it", old_path)
    mnli_ckpt = mnli_checkpoint
    if mnli_ckpt is None and os.path.isdir(os.path.join(output_dir, "mnli_checkpoint")) and "mnli" in results["tasks"]:
        mnli_ckpt = os.path.join(output_dir, "mnli_checkpoint")
    if mnli_ckpt and not os.path.isdir(mnli_ckpt):
        raise FileNotFoundError(f"--mnli-checkpoint {mnli_ckpt} is not a folder")

    for name in names:
        task = TASKS[name]
        if name in results["tasks"]:
            logger.info("=== %s: already in %s, skipped", name, old_path)
            continue
        task_seeds = list(seeds) if seeds else list(task.seeds)
        if num_seeds:
            task_seeds = task_seeds[:num_seeds]
        start = model
        start_note = "pretrained"
        if task.from_mnli:
            if mnli_ckpt:
                start, start_note = mnli_ckpt, f"mnli checkpoint {mnli_ckpt} (fresh classifier)"
            else:
                start_note = "pretrained (NO MNLI checkpoint: MNLI was not run and none was given)"
                logger.warning("%s: the paper starts %s from the MNLI-fine-tuned checkpoint, but there is "
                               "none (run mnli too, or pass --mnli-checkpoint); starting from %s",
                               name, name.upper(), model)
        logger.info("=== %s: lr %g, wd %g, batch %d, epochs %d, seeds %s, start: %s", name, task.lr,
                    task.weight_decay, task.batch_size, epochs or task.epochs, task_seeds, start_note)

        train, evals = load_task_data(task, data_dir)
        runs = []
        for i, seed in enumerate(task_seeds):
            save_to = None
            if name == "mnli" and i == 0 and keep_mnli_checkpoint:
                save_to = os.path.join(output_dir, "mnli_checkpoint")
            run = finetune(
                task, start,
                _subset(train, max_train_samples, seed),
                {k: _subset(v, max_eval_samples, 0) for k, v in evals.items()},
                tok, os.path.join(output_dir, "trainer", f"{name}_seed{seed}"), seed,
                epochs=epochs, fresh_classifier=start != model, save_model_to=save_to,
                bf16=bf16, max_length=max_length, max_grad_norm=max_grad_norm,
            )
            runs.append(run)
            shutil.rmtree(os.path.join(output_dir, "trainer", f"{name}_seed{seed}"), ignore_errors=True)
            if save_to:
                mnli_ckpt = save_to
        agg = aggregate_task(runs)
        results["tasks"][name] = {
            "recipe": {k: v for k, v in asdict(task).items()
                       if k in ("lr", "weight_decay", "batch_size", "epochs", "from_mnli")},
            "epochs_run": epochs or task.epochs,
            "seeds": task_seeds,
            "start": start_note,
            "eval_examples": {k: min(len(v), max_eval_samples or len(v)) for k, v in evals.items()},
            "runs": runs,
            **agg,
        }
        _write_results(results, output_dir)  # after every task, so partial runs leave results
    return results


def _write_results(results: dict, output_dir: str) -> None:
    tasks = results["tasks"]
    results["glue"] = glue_score({n: t["final"] for n, t in tasks.items()})
    results["glue_best_epoch"] = glue_score({n: t["best_epoch"] for n, t in tasks.items()})
    with open(os.path.join(output_dir, "results.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    with open(os.path.join(output_dir, "results.md"), "w") as fh:
        fh.write(format_markdown(results))


def format_markdown(results: dict) -> str:
    tasks = results["tasks"]
    order = [n for n in TASKS if n in tasks]
    lines = [
        f"GLUE dev results for `{results['model']}` on {results['device']} (scores x100).",
        "",
        "| task | metrics (final epoch) | final epoch | best epoch | seeds | epochs | train examples | start |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in order:
        t = tasks[n]
        mets = ", ".join(f"{k} {v:.2f}" for k, v in t["metrics_final"].items())
        ntrain = t["runs"][0]["train_examples"]
        lines.append(f"| {n} | {mets} | {t['final']:.2f} | {t['best_epoch']:.2f} | {t['num_seeds']} | "
                     f"{t['epochs_run']} | {ntrain} | {t['start']} |")
    g, gb = results["glue"], results["glue_best_epoch"]
    what = "GLUE (all 8 tasks)" if g["complete"] else f"mean over {len(g['tasks'])} tasks ({', '.join(g['tasks'])}), NOT the full GLUE score"
    lines += ["", f"**{what}: {g['score']:.2f}** (final epoch); {gb['score']:.2f} (best epoch).", ""]
    if results.get("overrides"):
        lines.append(f"Overrides of the paper's recipe: {json.dumps(results['overrides'])}.")
        lines.append("")
    return "\n".join(lines)
