"""GLUE task table, data loading and metrics for the MosaicBERT fine-tuning harness.

Everything task-specific lives in ``TASKS``: one frozen dataclass per task holding where the
data is (GLUE tsv columns and the ``nyu-mll/glue`` Hub columns), the labels, the metrics and
the paper's fine-tuning recipe (Portes et al. 2023, Table S2 and the original fine-tuning
configs, and the optimizer settings every task shares). The training code in ``mosaic_bert.glue.finetune``
only reads this table; the optimizer and schedule themselves are ``mosaic_bert.train.optim``'s.

This module is independent of the model code: nothing in ``mosaic_bert`` imports it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import GlueDataError, MosaicBertError

logger = logging.getLogger(__name__)

# Seeds of the original MosaicBERT GLUE configs; a task with ``num_seeds=n`` uses the first n.
PAPER_SEEDS = (19, 8364, 717, 10536, 90166)

MAX_SEQ_LENGTH = 256

Column = str | int  # a header name, or a 0-based column index for header-less files (CoLA)


@dataclass(frozen=True)
class GlueTask:
    name: str
    # --- data -------------------------------------------------------------------------
    hub_config: str  # config name in the Hub dataset nyu-mll/glue
    text_columns: tuple[Column, ...]  # GLUE tsv columns holding sentence 1 (and 2)
    label_column: Column  # GLUE tsv column holding the label / score
    hub_text_columns: tuple[str, ...]
    labels: tuple[str, ...] | None  # tsv label strings in id order; None for regression
    eval_files: tuple[tuple[str, str], ...]  # (split name, tsv stem) of the dev sets
    hub_eval_splits: tuple[tuple[str, str], ...]  # (split name, Hub split)
    has_header: bool = True
    # --- metrics ----------------------------------------------------------------------
    metrics: tuple[str, ...] = ("accuracy",)
    # --- the paper's recipe -----------------------------------------------------------
    lr: float = 5e-5
    weight_decay: float = 5e-6
    batch_size: int = 32
    epochs: int = 3
    num_seeds: int = 1
    from_mnli: bool = False  # start from the MNLI-fine-tuned checkpoint (fresh classifier)
    # decoupled AdamW (as pretraining) with one parameter group, linear warmup then linear decay to 0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_fraction: float = 0.06

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def seeds(self) -> tuple[int, ...]:
        return PAPER_SEEDS[: self.num_seeds]

    @property
    def problem_type(self) -> str:
        return "regression" if self.is_regression else "single_label_classification"


_DEV = (("dev", "dev"),)
_VAL = (("dev", "validation"),)
_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask(
            "mnli", "mnli", ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"),
            # same id order as nyu-mll/glue, so tsv- and Hub-trained checkpoints agree
            ("entailment", "neutral", "contradiction"),
            (("matched", "dev_matched"), ("mismatched", "dev_mismatched")),
            (("matched", "validation_matched"), ("mismatched", "validation_mismatched")),
            lr=5e-5, weight_decay=5e-6, batch_size=48, epochs=3, num_seeds=1,
        ),
        GlueTask(
            "qnli", "qnli", ("question", "sentence"), "label", ("question", "sentence"),
            _NLI2, _DEV, _VAL,
            lr=1e-5, weight_decay=1e-6, batch_size=16, epochs=10, num_seeds=1,
        ),
        GlueTask(
            "qqp", "qqp", ("question1", "question2"), "is_duplicate", ("question1", "question2"),
            ("0", "1"), _DEV, _VAL, metrics=("accuracy", "f1"),
            lr=3e-5, weight_decay=3e-6, batch_size=16, epochs=5, num_seeds=1,
        ),
        GlueTask(
            "rte", "rte", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"),
            _NLI2, _DEV, _VAL,
            lr=1e-5, weight_decay=1e-5, batch_size=16, epochs=3, num_seeds=5, from_mnli=True,
        ),
        GlueTask(
            "cola", "cola", (3,), 1, ("sentence",), ("0", "1"), _DEV, _VAL, has_header=False,
            metrics=("matthews",),
            lr=5e-5, weight_decay=5e-6, batch_size=32, epochs=10, num_seeds=4,
        ),
        GlueTask(
            "sst2", "sst2", ("sentence",), "label", ("sentence",), ("0", "1"), _DEV, _VAL,
            lr=3e-5, weight_decay=3e-6, batch_size=16, epochs=3, num_seeds=3,
        ),
        GlueTask(
            "mrpc", "mrpc", ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"),
            ("0", "1"), _DEV, _VAL, metrics=("accuracy", "f1"),
            lr=8e-5, weight_decay=8e-6, batch_size=32, epochs=10, num_seeds=5, from_mnli=True,
        ),
        GlueTask(
            "stsb", "stsb", ("sentence1", "sentence2"), "score", ("sentence1", "sentence2"),
            None, _DEV, _VAL, metrics=("pearson", "spearman"),
            lr=3e-5, weight_decay=3e-6, batch_size=32, epochs=10, num_seeds=5, from_mnli=True,
        ),
    )
}

# folder names of the standard glue_data layout (download_glue_data.py)
TSV_DIRS = {
    "mnli": "MNLI", "qnli": "QNLI", "qqp": "QQP", "rte": "RTE",
    "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B",
}
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "sts": "stsb"}


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """'all' | 'rte,mrpc' | ['RTE', 'SST-2'] -> canonical names, MNLI first (others may start from it)."""
    if isinstance(spec, str):
        spec = [s for s in spec.replace(",", " ").split() if s]
    names: list[str] = []
    for s in spec:
        key = _ALIASES.get(s.lower(), s.lower())
        if key == "all":
            names.extend(TASKS)
            continue
        if key not in TASKS:
            raise MosaicBertError(f"unknown GLUE task {s!r}; choose from {', '.join(TASKS)} or 'all'")
        names.append(key)
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda n: n != "mnli")


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------
def tsv_path(data_dir: str, task: GlueTask, stem: str) -> str:
    return os.path.join(data_dir, TSV_DIRS[task.name], f"{stem}.tsv")


def read_glue_tsv(path: str, task: GlueTask) -> dict[str, list]:
    """Read one GLUE tsv into columns ``text_a`` (, ``text_b``), ``label`` (int id or float score).

    Files are read as GLUE's own processors do: tab separated, no quoting (MRPC and QNLI hold
    bare double quotes), UTF-8 with an optional BOM (MRPC)."""
    if not os.path.isfile(path):
        raise GlueDataError(
            f"{task.name}: missing file {path}. Expected the glue_data layout "
            f"<data-dir>/{TSV_DIRS[task.name]}/{{train,{','.join(s for _, s in task.eval_files)}}}.tsv; "
            f"fix --data-dir, or use --data-dir hub to read nyu-mll/glue from the Hub."
        )
    rows = list(csv.reader(io.StringIO(_read_utf8(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [r for r in rows if r]  # tolerate blank lines
    rows, cols, width, first_line = _locate_columns(path, task, rows)
    n_lines = len(rows)
    rows = _drop_malformed(path, rows, width, first_line)
    if not rows:
        raise GlueDataError(f"{path}: no data rows (only a header). Use the full GLUE file." if not n_lines else
                            f"{path}: no usable rows: all {n_lines} lines lack the {width} tab-separated fields of the "
                            f"header. Is this a tab-separated GLUE file of {task.name}?")
    out: dict[str, list] = {"text_a": [r[cols[0]] for r in rows]}
    if len(task.text_columns) == 2:
        out["text_b"] = [r[cols[1]] for r in rows]
    out["label"] = _parse_labels(path, task, [r[cols[-1]].strip() for r in rows], first_line)
    return out


def _read_utf8(path: str) -> str:
    """The file's text (UTF-8, optional BOM); a line that is not UTF-8 is an error naming the file and line."""
    raw = open(path, "rb").read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise GlueDataError(f"{path}: line {line} is not UTF-8 ({e.reason} at byte {e.start}). Convert the file to "
                            f"UTF-8 (e.g. iconv -f latin1 -t utf-8) or fix that line.") from None


def _locate_columns(path: str, task: GlueTask, rows: list[list[str]]):
    """-> (data rows, [text column index(es)..., label index], fields per line, file line of the first data row)."""
    if not task.has_header:
        cols = [*task.text_columns, task.label_column]
        width = len(rows[0]) if rows else 0
        if rows and width <= max(cols):
            raise GlueDataError(
                f"{path}: {task.name} has no header and needs at least {max(cols) + 1} tab-separated "
                f"columns (text in column {task.text_columns}, label in column {task.label_column}); "
                f"the first line has {width}"
            )
        return rows, cols, width, 1
    if not rows:
        raise GlueDataError(f"{path}: empty file (expected a header line)")
    header = rows[0]
    index = {name: i for i, name in enumerate(header)}
    for c in (*task.text_columns, task.label_column):
        if c not in index:
            raise GlueDataError(
                f"{path}: column {c!r} not found in the header {header}; {task.name} needs "
                f"columns {list(task.text_columns) + [task.label_column]} (is this the right "
                f"task folder, and a tab-separated GLUE file?)"
            )
    return rows[1:], [index[c] for c in (*task.text_columns, task.label_column)], len(header), 2


def _drop_malformed(path: str, rows: list[list[str]], width: int, first_line: int) -> list[list[str]]:
    """A handful of malformed lines (e.g. a few in the official QQP train file) are skipped, as GLUE's processors
    do; many mean a wrong file or separator."""
    bad = [i for i, r in enumerate(rows) if len(r) != width]
    if not bad:
        return rows
    msg = (f"{path}: {len(bad)} of {len(rows)} lines do not have {width} tab-separated fields "
           f"(first: line {bad[0] + first_line})")
    if len(bad) > max(10, len(rows) // 1000):
        raise GlueDataError(msg + "; is the file tab-separated GLUE format?")
    logger.warning("%s; skipping them", msg)
    bad_set = set(bad)
    return [r for i, r in enumerate(rows) if i not in bad_set]


STSB_RANGE = (0.0, 5.0)  # STS-B similarity scores


def _parse_labels(path: str, task: GlueTask, raw: list[str], first_line: int = 2) -> list:
    """Label strings -> float scores (regression, in 0 to 5) or class ids in ``task.labels`` order."""
    col_name = task.label_column
    if task.is_regression:
        try:
            scores = [float(v) for v in raw]
        except ValueError as e:
            raise GlueDataError(f"{path}: column {col_name!r} must hold numbers for {task.name}: {e}") from None
        lo, hi = STSB_RANGE
        bad = [i for i, v in enumerate(scores) if not lo <= v <= hi]   # NaN fails too
        if bad:
            raise GlueDataError(f"{path}: line {bad[0] + first_line}: score {raw[bad[0]]} is outside {lo:g} to {hi:g} "
                                f"({len(bad)} such lines); {task.name} scores are similarities from 0 to 5. Fix "
                                f"the file.")
        return scores
    label_id = {lab: i for i, lab in enumerate(task.labels)}
    unknown = sorted(set(raw) - set(label_id))
    if unknown:
        raise GlueDataError(
            f"{path}: column {col_name!r} holds labels {unknown[:5]} that {task.name} does not "
            f"know; expected one of {list(task.labels)}"
        )
    return [label_id[v] for v in raw]


def load_task_data(task: GlueTask, data_dir: str):
    """-> (train Dataset, {split name: eval Dataset}) with columns text_a[, text_b], label.

    ``data_dir`` is a glue_data folder, or ``"hub"`` for the Hub dataset ``nyu-mll/glue``."""
    import datasets

    feats = {"text_a": datasets.Value("string")}
    if len(task.text_columns) == 2:
        feats["text_b"] = datasets.Value("string")
    feats["label"] = datasets.Value("float32" if task.is_regression else "int64")
    features = datasets.Features(feats)

    if data_dir == "hub":
        raw = datasets.load_dataset("nyu-mll/glue", task.hub_config)
        wanted = ["train", *(s for _, s in task.hub_eval_splits)]

        def convert(split):
            if split not in raw:
                raise GlueDataError(f"nyu-mll/glue/{task.hub_config}: no split {split!r} (has {list(raw)})")
            ds = raw[split]
            need = [*task.hub_text_columns, "label"]
            missing = [c for c in need if c not in ds.column_names]
            if missing:
                raise GlueDataError(f"nyu-mll/glue/{task.hub_config}/{split}: missing columns {missing} "
                                    f"(has {ds.column_names})")
            ds = ds.select_columns(need)
            ds = ds.rename_columns(dict(zip(task.hub_text_columns, ["text_a", "text_b"])))
            return ds.cast(features)

        train = convert(wanted[0])
        evals = {name: convert(split) for name, split in task.hub_eval_splits}
    else:
        train = datasets.Dataset.from_dict(read_glue_tsv(tsv_path(data_dir, task, "train"), task), features=features)
        evals = {name: datasets.Dataset.from_dict(read_glue_tsv(tsv_path(data_dir, task, stem), task), features=features)
                 for name, stem in task.eval_files}
    return train, evals


def check_data_available(task_names: Sequence[str], data_dir: str) -> None:
    """Fail before any training if a needed tsv is missing (all problems in one message)."""
    if data_dir == "hub":
        return
    missing = []
    for n in task_names:
        t = TASKS[n]
        for stem in ("train", *(s for _, s in t.eval_files)):
            p = tsv_path(data_dir, t, stem)
            if not os.path.isfile(p):
                missing.append(p)
    if missing:
        raise GlueDataError(
            "GLUE files not found:\n  " + "\n  ".join(missing)
            + "\nPass --tasks with the tasks you have, fix --data-dir, or use --data-dir hub."
        )


# ----------------------------------------------------------------------------------------
# metrics (scikit-learn / scipy; no evaluate.load, which downloads)
# ----------------------------------------------------------------------------------------
def compute_metric(name: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    """One metric x100. ``predictions`` are class ids, or scores for pearson/spearman."""
    from scipy import stats
    from sklearn import metrics as skm

    if name == "accuracy":
        v = skm.accuracy_score(labels, predictions)
    elif name == "f1":
        v = skm.f1_score(labels, predictions)  # positive class = 1, as GLUE
    elif name == "matthews":
        v = skm.matthews_corrcoef(labels, predictions)
    elif name in ("pearson", "spearman") and (np.ptp(predictions) == 0 or np.ptp(labels) == 0):
        v = 0.0  # a constant input has no correlation (scipy would warn and return nan)
    elif name == "pearson":
        v = stats.pearsonr(predictions, labels)[0]
    elif name == "spearman":
        v = stats.spearmanr(predictions, labels)[0]
    else:
        raise MosaicBertError(f"unknown metric {name!r}; choose from accuracy, f1, matthews, pearson, spearman")
    v = float(v)
    return 0.0 if math.isnan(v) else 100.0 * v  # constant predictions: correlation undefined -> 0


def task_metrics(task: GlueTask, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if task.is_regression:
        preds = logits.reshape(-1)
    else:
        preds = logits.reshape(len(labels), -1).argmax(-1)
    return {m: compute_metric(m, preds, labels) for m in task.metrics}


def epoch_score(metrics: dict[str, float]) -> float:
    """Task score of one evaluation: the mean of its metrics (over all eval splits)."""
    return float(np.mean(list(metrics.values())))


def aggregate_task(runs: list[dict]) -> dict:
    """``runs``: one per seed, each {"epochs": [{"epoch": e, "metrics": {...}}, ...]}.

    Returns the final-epoch score (the paper's number) and the best-epoch score, both averaged
    over seeds, plus the per-metric final-epoch means."""
    finals, bests, per_metric = [], [], {}
    for r in runs:
        scores = [epoch_score(e["metrics"]) for e in r["epochs"]]
        finals.append(scores[-1])
        bests.append(max(scores))
        for k, v in r["epochs"][-1]["metrics"].items():
            per_metric.setdefault(k, []).append(v)
    return {
        "final": float(np.mean(finals)),
        "best_epoch": float(np.mean(bests)),
        "metrics_final": {k: float(np.mean(v)) for k, v in per_metric.items()},
        "num_seeds": len(runs),
    }


def glue_score(task_scores: dict[str, float]) -> dict:
    """Mean over the tasks that ran; says which (the GLUE average proper needs all 8)."""
    ran = [n for n in TASKS if n in task_scores]
    return {
        "score": float(np.mean([task_scores[n] for n in ran])) if ran else float("nan"),
        "tasks": ran,
        "complete": len(ran) == len(TASKS),
    }
