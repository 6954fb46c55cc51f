"""Typed pretraining recipe: one dataclass per section (model, tokenizer, data, train), YAML loading (a path or a
recipe shipped in ``recipes/``), ``section.key=value`` overrides, validation, and the duration/batch arithmetic.

The model section is derived from ``mosaic_bert.BertConfig`` (its fields and defaults), so the recipe never re-lists
model settings. Fields that do not define a run carry ``RUN_DETAIL`` metadata and stay out of the resume fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import RecipeError


RUN_DETAIL = {"run_identity": False}   # field metadata: does not define the run (left out of the resume fingerprint)
SET_BY_TRAINER = ("pad_token_id",)     # model config fields the trainer takes from the tokenizer


def _model_fields() -> list[tuple]:
    """One recipe field per field MosaicBERT's `BertConfig` adds over `PretrainedConfig`, with its default, so every
    model setting (`fused_geglu`, `low_precision_layernorm`, `attention_backend`, ...) passes straight through."""
    from transformers import PretrainedConfig

    from ..modeling import BertConfig
    generic = set(PretrainedConfig().to_dict())
    defaults = {k: v for k, v in BertConfig().to_dict().items() if k not in generic and k not in SET_BY_TRAINER}
    defaults["vocab_size"] = None      # None: the tokenizer's size rounded up to a multiple of 64
    fields = [("family", str, field(default="mosaic"))]   # see train/model.py: mosaic, or the hf baseline
    return fields + [(k, Any, field(default=v)) for k, v in defaults.items()]


ModelConfig = dataclasses.make_dataclass("ModelConfig", _model_fields())
ModelConfig.__module__ = __name__
ModelConfig.__doc__ = ("The model section: `family` (mosaic | hf) and the fields of `mosaic_bert.BertConfig` with its "
                       "defaults (vocab_size None: the tokenizer's size rounded up to a multiple of 64).")


@dataclass
class TokenizerConfig:
    name_or_path: Optional[str] = None     # Hub name or local folder; None: train WordPiece on the train data
    vocab_size: int = 8192                 # used only when training a vocab
    training_docs: int = 200_000           # documents read to train a vocab


@dataclass
class DataConfig:
    train_files: Union[str, list, None] = None  # paths / globs; None (and no hub_name): the embedded Python-docs corpus
    valid_files: Union[str, list, None] = None  # None: a held-out split of the train documents
    format: str = "auto"                   # auto | text | lines | wiki | json | parquet | csv
    text_column: str = "text"
    hub_name: Optional[str] = None         # e.g. "allenai/c4" (streamed)
    hub_config: Optional[str] = None       # e.g. "en"
    hub_train_split: str = "train"
    hub_valid_split: str = "validation"
    max_seq_len: int = 128
    mode: str = "truncate"                 # truncate: one sample per document | chunk: split documents | pack: documents packed with ids
    max_train_docs: Optional[int] = None   # cap the documents tokenized into the cache (required for streamed Hub data)
    max_valid_docs: Optional[int] = 2000
    valid_fraction: float = 0.02           # held-out share when valid_files is None
    cache_dir: Optional[str] = field(default=None, metadata=RUN_DETAIL)  # tokenized cache; default ~/.cache/mosaic_bert
    num_workers: int = field(default=0, metadata=RUN_DETAIL)  # DataLoader workers (masking and collation)
    # processes converting the data on the fly (one input file each); 0: one per core when the inputs exceed 64 MB
    num_proc: int = field(default=0, metadata=RUN_DETAIL)
    # true: train straight from data.train_files or data.hub_name, read once in order and tokenized as it is read (no
    # conversion, truncate rows, one pass: a run ends early when the data does). The held-out rows are data.valid_files
    # (or data.hub_valid_split) tokenized in memory at start, at most data.max_valid_docs; with data.train_files and no
    # data.valid_files set train.eval_samples=0. Resume needs the same number of processes.
    streaming: bool = False


@dataclass
class TrainConfig:
    seed: int = 17
    global_batch_size: int = 4096
    microbatch_size: int = 128
    max_duration: Union[int, str] = "70000ba"   # int or "<n>ba" steps, "<n>sp" samples, "<n>tok" tokens
    mlm_probability: float = 0.30
    eval_mlm_probability: float = 0.15
    lr: float = 5.0e-4
    betas: tuple = (0.9, 0.98)
    eps: float = 1.0e-6
    weight_decay: float = 1.0e-5
    no_decay_bias_and_norm: bool = True
    warmup: Union[float, str] = 0.06       # fraction of the run, or "<n>ba"
    alpha_f: float = 0.02                  # final lr = alpha_f * lr
    grad_clip_norm: Optional[float] = 1.0
    mixed_precision: str = "auto"          # auto (bf16 on GPU, fp32 on CPU) | no | bf16 | fp16
    eval_interval: int = field(default=2000, metadata=RUN_DETAIL)
    eval_samples: int = field(default=2048, metadata=RUN_DETAIL)
    log_interval: int = field(default=50, metadata=RUN_DETAIL)
    checkpoint_interval: int = field(default=3500, metadata=RUN_DETAIL)
    keep_checkpoints: int = field(default=2, metadata=RUN_DETAIL)
    output_dir: str = field(default="runs/mosaic-bert", metadata=RUN_DETAIL)
    trackers: str = field(default="auto", metadata=RUN_DETAIL)  # auto (tensorboard when installed) | none | comma list
    # auto: torch.compile on CUDA (with bucketed, sync-free inputs for MosaicBERT: the fast path); true | false
    compile: Any = field(default="auto", metadata=RUN_DETAIL)
    # CUDA graphs (torch.compile mode "reduce-overhead"; compiled, one CUDA process): a microbatch's kernels in one
    # launch. Off by default: each new bucketed shape records a graph (bare loop at microbatch 128 on 8 repeated
    # batches +18 %, the recipe on real rows +3 %, at microbatch 256 slower; benchmarks/NOTES_speed.md)
    cuda_graphs: bool = field(default=False, metadata=RUN_DETAIL)
    # a sentence with [MASK], or a list; a word in braces ("such as a {list}") is masked and the top answer graded
    fill_mask_example: Union[str, list, None] = field(default=None, metadata=RUN_DETAIL)


@dataclass
class Recipe:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def sections(self) -> dict:
        return {name: getattr(self, name) for name in _SECTIONS}

    def fingerprint(self) -> dict:
        """The fields that define a run (all but those marked `RUN_DETAIL`); resuming under another one is refused."""
        return {name: {f.name: getattr(sec, f.name) for f in dataclasses.fields(sec) if f.metadata.get("run_identity", True)}
                for name, sec in self.sections().items()}


_SECTIONS = {"model": ModelConfig, "tokenizer": TokenizerConfig, "data": DataConfig, "train": TrainConfig}


def _coerce(cls, key: str, value: Any, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise RecipeError(f"Unknown recipe key '{where}.{key}'. Valid keys in '{where}': {', '.join(sorted(fields))}.")
    default = fields[key].default
    if default is dataclasses.MISSING and fields[key].default_factory is not dataclasses.MISSING:
        default = fields[key].default_factory()
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
        return words.get(value.lower(), value) if isinstance(value, str) else value
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, (int, float)):
        return int(value) if float(value).is_integer() else value
    if isinstance(default, float) and isinstance(value, (int, float)):
        return float(value)
    if isinstance(default, tuple) and isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def recipe_from_dict(d: dict) -> Recipe:
    r = Recipe()
    for key, value in (d or {}).items():
        if key == "name":
            r.name = str(value)
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise RecipeError(f"Recipe section '{key}' must be a mapping, got {type(value).__name__}.")
            sec = getattr(r, key)
            for k, v in value.items():
                setattr(sec, k, _coerce(type(sec), k, v, key))
        else:
            raise RecipeError(f"Unknown recipe section '{key}'. Valid: name, {', '.join(_SECTIONS)}.")
    return r


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    import yaml
    d = json.loads(json.dumps(d))  # deep copy
    for ov in overrides:
        if "=" not in ov:
            raise RecipeError(f"Override '{ov}' is not of the form section.key=value (e.g. train.lr=1e-4).")
        key, raw = ov.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", value):
            value = float(value)  # YAML 1.1 reads 1e-4 as a string
        parts = key.strip().split(".")
        if parts == ["name"]:
            d["name"] = value
            continue
        if len(parts) != 2 or parts[0] not in _SECTIONS:
            raise RecipeError(f"Override key '{key}' must be section.key with section in {list(_SECTIONS)}.")
        d.setdefault(parts[0], {})[parts[1]] = value
    return d


def _fix_floats(obj):
    if isinstance(obj, dict):
        return {k: _fix_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fix_floats(v) for v in obj]
    if isinstance(obj, str) and re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", obj):
        return float(obj)
    return obj


RECIPES_DIR = Path(__file__).resolve().parent / "recipes"   # shipped with the package (package data)
DEFAULT_RECIPE = "tiny-default"


def recipe_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a recipe shipped in `mosaic_bert/train/recipes/` (e.g. `mosaic-bert-base-uncased`)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    shipped = RECIPES_DIR / (p.name if p.suffix else p.name + ".yaml")
    if shipped.exists():
        return shipped
    names = ", ".join(sorted(q.stem for q in RECIPES_DIR.glob("*.yaml")))
    raise RecipeError(f"Recipe '{name_or_path}' is neither a YAML file nor a shipped recipe. "
                      f"Pass a path to a YAML file, or one of: {names}.")


def load_recipe(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Recipe:
    """The recipe at `path` (a YAML path or a shipped recipe name; None = the tiny default) with `key=value`
    overrides applied, validated."""
    import yaml
    p = recipe_path(path or DEFAULT_RECIPE)
    d = _fix_floats(yaml.safe_load(p.read_text()) or {})
    d.setdefault("name", p.stem)
    d = apply_overrides(d, overrides or [])
    r = recipe_from_dict(d)
    validate(r)
    return r


def validate(r: Recipe) -> None:
    """Every recipe problem a run would otherwise meet later (a ZeroDivisionError at the first log, a Hub lookup
    for an unknown format, a model with no layers), as a RecipeError that names the key and a valid value."""
    from .model import model_family
    family = model_family(r.model.family)  # an unknown family is a RecipeError listing the known ones
    _check_types(r)
    _check_train(r.train)
    _check_data(r.data, r.tokenizer)
    _check_streaming(r.data, r.train)
    _check_model(r.model, r.data, r.model.family)
    if r.data.mode not in ("truncate", "chunk", "pack"):
        raise RecipeError(f"data.mode must be truncate, chunk or pack, got '{r.data.mode}'.")
    if r.data.mode == "pack" and not family.reads_document_ids:
        raise RecipeError("data.mode=pack puts document ids in attention_mask, which only MosaicBERT understands; "
                          "use data.mode=truncate or chunk with model.family=hf.")


_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false"}
DATA_FORMATS = ("auto", "text", "lines", "wiki", "json", "parquet", "csv")
PRECISIONS = ("auto", "no", "bf16", "fp16")


def _field_kind(f) -> Optional[str]:
    """'int' | 'float' | 'bool' for a field that must hold one (from its annotation, or for the model section's
    fields from the default's type); None for free-form fields (durations, paths, optional settings)."""
    ann = f.type if isinstance(f.type, str) else ""
    if ann in ("int", "float", "bool"):
        return ann
    if ann.startswith("Optional[") and ann[9:-1] in ("int", "float"):
        return ann[9:-1]
    if f.type is Any and f.default is not None and type(f.default) in (int, float, bool):
        return type(f.default).__name__
    return None


def _kind_ok(kind: str, v) -> bool:
    if kind == "bool":
        return isinstance(v, bool)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (kind == "float" or float(v).is_integer())


def _check_types(r: Recipe) -> None:
    for name, sec in r.sections().items():
        for f in dataclasses.fields(sec):
            kind, v = _field_kind(f), getattr(sec, f.name)
            if kind is None or (v is None and "Optional" in str(f.type)) or _kind_ok(kind, v):
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            raise RecipeError(f"{name}.{f.name} must be {_KIND_WORDS[kind]}, got {v!r}; e.g. {name}.{f.name}={default}.")


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise RecipeError(msg)


def _check_train(t: TrainConfig) -> None:
    if t.microbatch_size <= 0 or t.global_batch_size <= 0:
        raise RecipeError("train.global_batch_size and train.microbatch_size must be positive.")
    for name in ("mlm_probability", "eval_mlm_probability"):
        _need(0.0 < getattr(t, name) < 1.0, f"train.{name} must be in (0, 1), got {getattr(t, name)}.")
    for k in ("eval_interval", "log_interval", "checkpoint_interval"):
        _need(getattr(t, k) >= 1, f"train.{k} must be >= 1 (optimizer steps between events), got {getattr(t, k)}.")
    for k, low in (("lr", "> 0"), ("eps", "> 0"), ("weight_decay", ">= 0"), ("alpha_f", ">= 0"),
                   ("eval_samples", ">= 0"), ("keep_checkpoints", ">= 0")):
        v = getattr(t, k)
        _need(v > 0 if low == "> 0" else v >= 0, f"train.{k} must be {low}, got {v}.")
    _need(t.grad_clip_norm is None or t.grad_clip_norm >= 0, "train.grad_clip_norm must be >= 0 or null (no clip).")
    _need(t.compile in ("auto", True, False), f"train.compile must be auto, true or false, got {t.compile!r}.")
    _need(t.cuda_graphs in (True, False), f"train.cuda_graphs must be true or false, got {t.cuda_graphs!r}.")
    if t.mixed_precision is False:  # YAML reads a bare `no` (train.mixed_precision=no) as false
        t.mixed_precision = "no"
    _need(t.mixed_precision in PRECISIONS, f"train.mixed_precision must be one of {', '.join(PRECISIONS)}, got "
                                           f"{t.mixed_precision!r}.")
    b = t.betas
    _need(isinstance(b, (list, tuple)) and len(b) == 2 and all(_kind_ok("float", x) for x in b),
          f"train.betas must be two numbers, e.g. train.betas=[0.9, 0.98]; got {b!r}.")
    _need(all(0 <= x < 1 for x in b), f"train.betas must both be in [0, 1), got {list(b)}.")
    _need(parse_duration(t.max_duration)[0] > 0, f"train.max_duration must be positive, got {t.max_duration!r}; "
                                                  f"e.g. 400ba (steps), 2e6sp (samples) or 1e9tok (tokens).")
    if isinstance(t.warmup, str):
        warmup_steps(t.warmup, 1)
    else:
        _need(_kind_ok("float", t.warmup) and t.warmup >= 0, f"train.warmup must be >= 0 (a fraction of the run "
                                                            f"like 0.06, or steps like '500ba'), got {t.warmup!r}.")
    out = Path(str(t.output_dir)).expanduser()
    _need(not out.exists() or out.is_dir(), f"train.output_dir {out} is a file: set train.output_dir to a folder.")


def _check_data(d: DataConfig, tok: TokenizerConfig) -> None:
    _need(d.max_seq_len >= 8, f"data.max_seq_len must be >= 8 ([CLS], [SEP] and tokens to mask), got {d.max_seq_len}.")
    _need(d.format in DATA_FORMATS, f"data.format {d.format!r} is unknown: use one of {', '.join(DATA_FORMATS)}.")
    _need(0 <= d.valid_fraction < 1, f"data.valid_fraction must be in [0, 1), got {d.valid_fraction}.")
    for k in ("max_train_docs", "max_valid_docs"):
        v = getattr(d, k)
        _need(v is None or v >= 1, f"data.{k} must be >= 1, or null for no limit; got {v}.")
    _need(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}.")
    _need(_kind_ok("int", d.num_proc) and d.num_proc >= 0,
          f"data.num_proc must be >= 0 (0: one conversion process per core for large inputs), got {d.num_proc!r}.")
    _need(tok.name_or_path is not None or tok.vocab_size >= 32,
          f"tokenizer.vocab_size must be >= 32 (special tokens and characters), got {tok.vocab_size}.")
    _need(tok.training_docs >= 1, f"tokenizer.training_docs must be >= 1, got {tok.training_docs}.")


def _check_streaming(d: DataConfig, t: TrainConfig) -> None:
    """What data.streaming=true cannot do, each with the setting that fixes it."""
    if not d.streaming:
        return
    _need(d.mode == "truncate", f"data.streaming=true makes truncate rows only (one per document, as read), got "
                                f"data.mode={d.mode}: set data.mode=truncate, or data.streaming=false to convert for "
                                f"chunk/pack rows.")
    _need(d.train_files is not None or d.hub_name is not None,
          "data.streaming=true needs data.train_files (local files) or data.hub_name: the embedded corpus is small, "
          "leave data.streaming=false for it.")
    _need(d.num_workers in (0, 1), f"data.streaming=true reads one ordered stream per process: set data.num_workers "
                                   f"to 0 or 1, got {d.num_workers}.")
    _need(d.max_train_docs is None, f"data.max_train_docs={d.max_train_docs} caps a conversion; a stream is read until "
                                    f"train.max_duration: set data.max_train_docs=null.")
    _need(parse_duration(t.max_duration)[1] != "tok",
          f"train.max_duration={t.max_duration!r} counts tokens, which a stream does not know ahead: give steps "
          f"(e.g. 1000ba) or samples (e.g. 2e6sp) with data.streaming=true.")
    _need(d.hub_name is not None or d.valid_files is not None or t.eval_samples == 0,
          "data.streaming=true holds no documents out of data.train_files (they are read once, in order): set "
          "data.valid_files to held-out files, or train.eval_samples=0 to train without evaluation.")


def _check_model(m, d: DataConfig, family: str) -> None:
    _need(m.vocab_size is None or (_kind_ok("int", m.vocab_size) and m.vocab_size >= 1),
          f"model.vocab_size must be >= 1, or null (the tokenizer's size rounded up to 64); got {m.vocab_size!r}.")
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings"):
        _need(getattr(m, k) >= 1, f"model.{k} must be >= 1, got {getattr(m, k)}.")
    _need(m.hidden_size % m.num_attention_heads == 0, f"model.hidden_size ({m.hidden_size}) must be a multiple of "
                                                      f"model.num_attention_heads ({m.num_attention_heads}).")
    for k in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        _need(0 <= getattr(m, k) < 1, f"model.{k} must be in [0, 1), got {getattr(m, k)}.")
    _need(family != "hf" or d.max_seq_len <= m.max_position_embeddings,
          f"data.max_seq_len ({d.max_seq_len}) exceeds model.max_position_embeddings ({m.max_position_embeddings}) "
          f"of the hf baseline (learned positions): lower one or raise the other.")


def check_batch(r: Recipe, num_processes: int) -> int:
    """Gradient-accumulation steps for this world size; raises a clear error when it does not divide."""
    g, mb = r.train.global_batch_size, r.train.microbatch_size
    if g % (mb * num_processes) != 0:
        per = mb * num_processes
        ok = [m for m in range(1, mb + 1) if g % (m * num_processes) == 0]
        fix = f"set train.microbatch_size={ok[-1]}, or " if ok else ""
        raise RecipeError(
            f"train.global_batch_size={g} is not divisible by microbatch_size x processes = {mb} x {num_processes} = {per}. "
            f"Fix: {fix}use a global batch that is a multiple of {per}.")
    return g // (mb * num_processes)


def parse_duration(value, what: str = "train.max_duration") -> tuple[float, str]:
    """Returns (amount, unit) with unit in {"ba", "sp", "tok"}."""
    if isinstance(value, (int, float)):
        return float(value), "ba"
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*(ba|steps?|sp|samples?|tok|tokens?)\s*", str(value))
    if not m:
        raise RecipeError(f"{what} '{value}' not understood: use e.g. 70000ba (steps), 2e6sp (samples) or 1e9tok "
                          f"(tokens){', or a fraction of the run like 0.06 or 500ba' if what == 'train.warmup' else ''}.")
    u = m.group(2)
    unit = "ba" if u in ("ba", "step", "steps") else ("sp" if u in ("sp", "sample", "samples") else "tok")
    return float(m.group(1)), unit


def duration_to_steps(value, global_batch: int, mean_tokens_per_sample: float) -> int:
    amount, unit = parse_duration(value)
    if unit == "ba":
        steps = amount
    elif unit == "sp":
        steps = amount / global_batch
    else:
        steps = amount / (global_batch * max(mean_tokens_per_sample, 1e-9))
    return max(1, int(math.ceil(steps - 1e-9)))


def warmup_steps(value, total_steps: int) -> int:
    if isinstance(value, str):
        amount, unit = parse_duration(value, "train.warmup") if not value.endswith("dur") else (float(value[:-3]), "dur")
        if unit == "dur":
            return int(round(amount * total_steps))
        if unit != "ba":
            raise RecipeError("train.warmup must be a fraction of the run (e.g. 0.06) or a number of steps ('500ba').")
        return int(amount)
    if value < 1:
        return int(round(value * total_steps))
    return int(value)


def config_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
