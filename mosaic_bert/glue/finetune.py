"""GLUE fine-tuning with the MosaicBERT paper's recipe, on ``transformers.Trainer``.

``run_glue(model, tasks, data_dir, output_dir)`` fine-tunes and evaluates any model that loads
with ``AutoModelForSequenceClassification.from_pretrained`` (our checkpoints and stock Hugging Face
BERTs alike) and writes ``results.json`` and ``results.md``. A model's own code (remote code) runs
for a local folder that ships it; for a Hub id only with ``trust_remote_code=True``.

Recipe (every number in ``mosaic_bert.glue.tasks.TASKS``): pretraining's decoupled AdamW
(``mosaic_bert.train.optim``), linear warmup then linear decay to 0, max length 256, dynamic
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
from transformers import TrainerCallback

from ..errors import GlueDataError, ModelLoadError, RecipeError
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


# ----------------------------------------------------------------------------------------
# optimizer and schedule: pretraining's (mosaic_bert.train.optim), numbers from the task table
# ----------------------------------------------------------------------------------------
def build_optimization(model: torch.nn.Module, task: GlueTask, total_steps: int):
    """-> (optimizer, scheduler): decoupled AdamW with ``task``'s lr / weight decay / betas / eps and, as in the
    paper's fine-tuning code, one group (every parameter decayed); linear warmup over ``task.warmup_fraction``
    of ``total_steps``, then linear decay to 0."""
    optimizer = build_optimizer(model, task.lr, task.betas, task.eps, task.weight_decay, no_decay_bias_and_norm=False)
    warmup = max(1, int(round(task.warmup_fraction * total_steps)))
    return optimizer, build_scheduler(optimizer, warmup, total_steps, alpha_f=0.0)


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


def ships_remote_code(folder: str) -> bool:
    """A local model folder whose config.json maps its classes to code files the folder holds (``auto_map``), as
    the folders our pretraining exports do."""
    try:
        with open(os.path.join(folder, "config.json")) as fh:
            auto_map = json.load(fh).get("auto_map") or {}
    except (OSError, ValueError, AttributeError):
        return False
    refs = [v for v in auto_map.values() if isinstance(v, str)]
    return bool(refs) and all(os.path.isfile(os.path.join(folder, r.split("--")[-1].split(".")[0] + ".py"))
                              for r in refs)


def resolve_trust_remote_code(model: str, trust_remote_code: bool | None) -> bool:
    """``None`` (the default): run a model's own code only for a local folder that ships it; for a Hub id only
    when asked for explicitly (``--trust-remote-code``)."""
    if trust_remote_code is not None:
        return bool(trust_remote_code)
    return os.path.isdir(model) and ships_remote_code(model)


def check_model_source(model: str, what: str = "--model") -> None:
    """A model that names a local folder must be one; anything else is tried as a Hub id when loaded."""
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ModelLoadError(f"{what} {model}: the folder has no config.json. Pass the output folder of a finished "
                                 f"pretraining run, or a Hub id.")
        return
    first = model.split("/")[0]
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or (first != model and os.path.isdir(first)):
        raise ModelLoadError(f"{what} {model}: no such folder. Check the path (the output_dir of a finished "
                             f"pretraining run), or pass a Hub id such as bert-base-uncased.")


def _from_pretrained(loader, path: str, **kwargs):
    """``loader.from_pretrained`` with its library errors turned into a ModelLoadError that says what to do."""
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelLoadError(f"Cannot load {path}: not a local model folder, and not loadable from the Hub "
                             f"({str(e).splitlines()[0][:200]}). Check --model / --tokenizer.") from None
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise ModelLoadError(f"{path} ships its own model code, which runs only when allowed: review it, then pass "
                             f"--trust-remote-code.") from None


def load_tokenizer(path: str, trust_remote_code: bool | None = None):
    """The fast tokenizer of a folder or Hub id (our folders' config has its own model_type, so the tokenizer loader
    asks about remote code as the model loader does)."""
    from transformers import AutoTokenizer
    tok = _from_pretrained(AutoTokenizer, path, use_fast=True,
                           trust_remote_code=resolve_trust_remote_code(path, trust_remote_code))
    if not getattr(tok, "is_fast", False):
        logger.warning("tokenizer %s is not a fast tokenizer", path)
    return tok


def load_model(path: str, task: GlueTask, fresh_classifier: bool = False, trust_remote_code: bool | None = None):
    from transformers import AutoModelForSequenceClassification

    kwargs = dict(
        num_labels=task.num_labels,
        problem_type=task.problem_type,  # explicit: an MNLI checkpoint says single_label
        trust_remote_code=resolve_trust_remote_code(path, trust_remote_code),
        dtype=torch.float32,  # master weights in fp32 even if the checkpoint is stored in 16 bit
    )
    if task.labels is not None:
        kwargs["id2label"] = dict(enumerate(task.labels))
        kwargs["label2id"] = {lab: i for i, lab in enumerate(task.labels)}
    else:
        kwargs["id2label"] = {0: "score"}
        kwargs["label2id"] = {"score": 0}
    model = _from_pretrained(AutoModelForSequenceClassification, path, ignore_mismatched_sizes=True, **kwargs)
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


class _CollectEvals(TrainerCallback):
    """Trainer callback: with a dict of eval sets Trainer evaluates (and calls ``on_evaluate``) once per split;
    this gathers them into ``evals`` = [{"epoch": e, "metrics": {name: value}}, ...] (one entry per epoch)."""

    def __init__(self, task: GlueTask, splits, seed: int):
        self.task, self.splits, self.seed = task, list(splits), seed
        self.evals: list[dict] = []

    def metric_names(self, metrics: dict) -> dict:
        out = {}
        for k, v in (metrics or {}).items():
            for split in self.splits:
                pre = f"eval_{split}_"
                if k.startswith(pre) and k[len(pre):] in self.task.metrics:
                    name = k[len(pre):] if len(self.splits) == 1 else f"{split}_{k[len(pre):]}"
                    out[name] = float(v)
        return out

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        split_metrics = self.metric_names(metrics)
        ep = int(round(state.epoch or 0))
        if self.evals and self.evals[-1]["epoch"] == ep:
            self.evals[-1]["metrics"].update(split_metrics)
        else:
            self.evals.append({"epoch": ep, "metrics": split_metrics})
        logger.info("%s seed %d epoch %d: %s", self.task.name, self.seed, ep,
                    ", ".join(f"{k}={v:.2f}" for k, v in self.evals[-1]["metrics"].items()))


def _training_args(task: GlueTask, output_dir: str, seed: int, epochs: int, steps_per_epoch: int, bf16: bool,
                   logging_steps: int, max_grad_norm: float, torch_compile: bool = False):
    from transformers import TrainingArguments

    return TrainingArguments(
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
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        max_grad_norm=max_grad_norm,  # 0: no clipping (the paper's Composer runs did not clip)
        torch_compile=torch_compile,  # the model under torch.compile (Trainer wraps it)
    )


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
    torch_compile: bool = False,
    trust_remote_code: bool | None = None,
) -> dict:
    """Fine-tune one seed; returns {"epochs": [{"epoch", "metrics"}...], "train_time_s", ...}."""
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    epochs = task.epochs if epochs is None else epochs
    if epochs < 1:
        raise RecipeError(f"epochs must be >= 1, got {epochs}.")
    set_seed(seed)
    model = load_model(model_path, task, fresh_classifier=fresh_classifier, trust_remote_code=trust_remote_code)
    train_tok = _tokenize(train_ds, tokenizer, max_length)
    eval_tok = {k: _tokenize(v, tokenizer, max_length) for k, v in eval_sets.items()}
    if bf16 is None:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    steps_per_epoch = math.ceil(len(train_tok) / task.batch_size)
    collector = _CollectEvals(task, eval_tok, seed)
    trainer = Trainer(
        model=model,
        args=_training_args(task, output_dir, seed, epochs, steps_per_epoch, bf16, logging_steps, max_grad_norm,
                            torch_compile),
        train_dataset=train_tok,
        eval_dataset=eval_tok,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=lambda p: task_metrics(task, p.predictions, p.label_ids),
        optimizers=build_optimization(model, task, steps_per_epoch * epochs),
        callbacks=[collector],
    )
    t0 = time.time()
    trainer.train()
    train_time = time.time() - t0
    if save_model_to:
        trainer.save_model(save_model_to)
        tokenizer.save_pretrained(save_model_to)
    result = {"seed": seed, "epochs": collector.evals, "train_examples": len(train_tok),
              "steps": trainer.state.global_step, "train_time_s": round(train_time, 1), "bf16": bool(bf16)}
    del trainer, model
    if torch.cuda.is_available():
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
    torch_compile: bool = False,
    trust_remote_code: bool | None = None,
) -> dict:
    """Fine-tune ``model`` on ``tasks`` and write ``results.json`` / ``results.md`` to ``output_dir``.

    ``seeds`` replaces every task's seed list, ``num_seeds`` truncates it, ``epochs`` overrides
    every task's epoch count (each override is recorded in the results). With ``resume``, tasks
    already in ``output_dir/results.json`` for the same model are kept and not run again. ``trust_remote_code``:
    None runs a model's own code only for a local folder that ships it (ours); True/False decide for every model."""
    names = resolve_tasks(tasks)
    check_inputs(names, model, tokenizer, data_dir, dict(epochs=epochs, max_train_samples=max_train_samples,
                                                         max_eval_samples=max_eval_samples, seeds=num_seeds))
    os.makedirs(output_dir, exist_ok=True)
    tok = load_tokenizer(tokenizer or model, trust_remote_code)
    overrides = dict(seeds=list(seeds) if seeds else None, num_seeds=num_seeds, epochs=epochs,
                     max_train_samples=max_train_samples, max_eval_samples=max_eval_samples)
    results: dict = {
        "model": model,
        "tokenizer": tokenizer or model,
        "data_dir": data_dir,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "overrides": {k: v for k, v in overrides.items() if v is not None},
        "tasks": _finished_tasks(output_dir, model, overrides, resume),
    }
    mnli_ckpt = _mnli_checkpoint(mnli_checkpoint, output_dir, results["tasks"])
    settings = dict(seeds=seeds, num_seeds=num_seeds, epochs=epochs, max_train_samples=max_train_samples,
                    max_eval_samples=max_eval_samples, bf16=bf16, max_length=max_length,
                    max_grad_norm=max_grad_norm, keep_mnli_checkpoint=keep_mnli_checkpoint,
                    torch_compile=torch_compile, trust_remote_code=trust_remote_code)
    for name in names:
        if name in results["tasks"]:
            logger.info("=== %s: already in %s, skipped", name, os.path.join(output_dir, "results.json"))
            continue
        results["tasks"][name], saved = _run_task(TASKS[name], model, mnli_ckpt, data_dir, output_dir, tok, settings)
        mnli_ckpt = saved or mnli_ckpt
        _write_results(results, output_dir)  # after every task, so partial runs leave results
    return results


def check_inputs(names: list[str], model: str, tokenizer: str | None, data_dir: str, counts: dict) -> None:
    """Everything a run needs, checked before any training: the counts (epochs, samples, seeds), the data files, the
    model and tokenizer."""
    for key, v in counts.items():
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise RecipeError(f"--{key.replace('_', '-')} must be >= 1 (or left out for the paper's value), got {v!r}.")
    check_data_available(names, data_dir)
    check_model_source(model)
    check_model_source(tokenizer or model, "--tokenizer" if tokenizer else "--model")


def _finished_tasks(output_dir: str, model: str, overrides: dict, resume: bool) -> dict:
    """Tasks already in ``output_dir/results.json`` from the same model and overrides (kept when resuming)."""
    path = os.path.join(output_dir, "results.json")
    if not (resume and os.path.isfile(path)):
        return {}
    with open(path) as fh:
        old = json.load(fh)
    if old.get("model") != model or old.get("overrides") != {k: v for k, v in overrides.items() if v is not None}:
        logger.warning("%s is from another model or settings; overwriting it", path)
        return {}
    done = dict(old.get("tasks", {}))
    if done:
        logger.info("resuming %s: keeping finished tasks %s", path, ", ".join(done))
    return done


def _mnli_checkpoint(given: str | None, output_dir: str, finished: dict) -> str | None:
    """The MNLI-fine-tuned checkpoint RTE/MRPC/STS-B start from: the one given, or this output folder's own."""
    own = os.path.join(output_dir, "mnli_checkpoint")
    ckpt = given
    if ckpt is None and os.path.isdir(own) and "mnli" in finished:
        ckpt = own
    if ckpt and not os.path.isdir(ckpt):
        raise GlueDataError(f"--mnli-checkpoint {ckpt} is not a folder; pass an MNLI-fine-tuned checkpoint folder")
    return ckpt


def _start_point(task: GlueTask, model: str, mnli_ckpt: str | None) -> tuple[str, str]:
    """-> (checkpoint to start ``task`` from, a note for the results)."""
    if not task.from_mnli:
        return model, "pretrained"
    if mnli_ckpt:
        return mnli_ckpt, f"mnli checkpoint {mnli_ckpt} (fresh classifier)"
    logger.warning("%s: the paper starts %s from the MNLI-fine-tuned checkpoint, but there is none (run mnli too, "
                   "or pass --mnli-checkpoint); starting from %s", task.name, task.name.upper(), model)
    return model, "pretrained (NO MNLI checkpoint: MNLI was not run and none was given)"


def _run_task(task: GlueTask, model: str, mnli_ckpt, data_dir: str, output_dir: str, tok, s: dict):
    """Every seed of one task -> (the task's results entry, the MNLI checkpoint it saved or None)."""
    task_seeds = list(s["seeds"]) if s["seeds"] else list(task.seeds)
    if s["num_seeds"]:
        task_seeds = task_seeds[: s["num_seeds"]]
    start, start_note = _start_point(task, model, mnli_ckpt)
    logger.info("=== %s: lr %g, wd %g, batch %d, epochs %d, seeds %s, start: %s", task.name, task.lr,
                task.weight_decay, task.batch_size, s["epochs"] or task.epochs, task_seeds, start_note)
    train, evals = load_task_data(task, data_dir)
    runs, saved = [], None
    for i, seed in enumerate(task_seeds):
        save_to = None
        if task.name == "mnli" and i == 0 and s["keep_mnli_checkpoint"]:
            save_to = saved = os.path.join(output_dir, "mnli_checkpoint")
        work = os.path.join(output_dir, "trainer", f"{task.name}_seed{seed}")
        runs.append(finetune(
            task, start, _subset(train, s["max_train_samples"], seed),
            {k: _subset(v, s["max_eval_samples"], 0) for k, v in evals.items()}, tok, work, seed,
            epochs=s["epochs"], fresh_classifier=start != model, save_model_to=save_to, bf16=s["bf16"],
            max_length=s["max_length"], max_grad_norm=s["max_grad_norm"], torch_compile=s["torch_compile"],
            trust_remote_code=s["trust_remote_code"],
        ))
        shutil.rmtree(work, ignore_errors=True)
    entry = {
        "recipe": {k: v for k, v in asdict(task).items()
                   if k in ("lr", "weight_decay", "batch_size", "epochs", "from_mnli")},
        "epochs_run": s["epochs"] or task.epochs,
        "seeds": task_seeds,
        "start": start_note,
        "eval_examples": {k: min(len(v), s["max_eval_samples"] or len(v)) for k, v in evals.items()},
        "runs": runs,
        **aggregate_task(runs),
    }
    return entry, saved


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
