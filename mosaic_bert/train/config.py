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
    compile: bool = field(default=False, metadata=RUN_DETAIL)
    fill_mask_example: Optional[str] = field(default=None, metadata=RUN_DETAIL)


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
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        return bool(value)
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
    from .model import model_family
    family = model_family(r.model.family)  # an unknown family is a RecipeError listing the known ones
    if r.data.mode not in ("truncate", "chunk", "pack"):
        raise RecipeError(f"data.mode must be truncate, chunk or pack, got '{r.data.mode}'.")
    if r.data.mode == "pack" and not family.reads_document_ids:
        raise RecipeError("data.mode=pack puts document ids in attention_mask, which only MosaicBERT understands; "
                          "use data.mode=truncate or chunk with model.family=hf.")
    t = r.train
    if t.microbatch_size <= 0 or t.global_batch_size <= 0:
        raise RecipeError("train.global_batch_size and train.microbatch_size must be positive.")
    for name in ("mlm_probability", "eval_mlm_probability"):
        if not 0.0 < getattr(t, name) < 1.0:
            raise RecipeError(f"train.{name} must be in (0, 1).")
    parse_duration(t.max_duration)


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


def parse_duration(value) -> tuple[float, str]:
    """Returns (amount, unit) with unit in {"ba", "sp", "tok"}."""
    if isinstance(value, (int, float)):
        return float(value), "ba"
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*(ba|steps?|sp|samples?|tok|tokens?)\s*", str(value))
    if not m:
        raise RecipeError(f"train.max_duration '{value}' not understood: use e.g. 70000ba (steps), 2e6sp (samples) or 1e9tok (tokens).")
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
        amount, unit = parse_duration(value) if not value.endswith("dur") else (float(value[:-3]), "dur")
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
