"""The model/optimizer/schedule part of a checkpoint in formats that cannot run code when read: tensors in
safetensors, everything else in JSON. Nothing here unpickles; a checkpoint folder holding any other file (e.g. the
``*.pkl`` / ``*.bin`` pickles Accelerate's ``save_state`` writes) is refused before anything is read.

Files: ``model.safetensors`` (the unwrapped model; tied weights stored once), ``optimizer.safetensors`` (per-parameter
state tensors, keys ``<param id>.<name>``) + ``optimizer.json`` (param groups and non-tensor state), ``scheduler.json``.
RNG state is not saved: the trainer reseeds from (seed, step, microbatch), so a resumed run draws the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ..errors import ResumeError

MODEL, OPT_TENSORS, OPT_META, SCHEDULER = "model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json"
STATE_FILES = (MODEL, OPT_TENSORS, OPT_META, SCHEDULER)


def optimizer_files(state_dict: dict) -> tuple[dict, dict]:
    """An optimizer ``state_dict`` -> (tensors for safetensors, the rest as JSON)."""
    tensors, rest = {}, {}
    for pid, st in state_dict["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                rest.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": state_dict["param_groups"], "state": rest}


def optimizer_state(tensors: dict, meta: dict) -> dict:
    """Inverse of `optimizer_files`."""
    state: dict = {int(pid): dict(v) for pid, v in meta["state"].items()}
    for key, t in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(folder: Path, model, optimizer, scheduler) -> None:
    folder = Path(folder)
    save_model(model, str(folder / MODEL))
    tensors, meta = optimizer_files(optimizer.state_dict())
    save_file(tensors, str(folder / OPT_TENSORS))
    (folder / OPT_META).write_text(json.dumps(meta))
    (folder / SCHEDULER).write_text(json.dumps(scheduler.state_dict()))


def check_checkpoint_files(folder: Path, allowed: tuple[str, ...]) -> None:
    """Refuse a checkpoint folder with files this format does not write (pickles can run code when loaded) or
    without the ones it needs."""
    folder = Path(folder)
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in allowed)
    if foreign:
        raise ResumeError(f"Refusing to resume from {folder}: it holds {', '.join(foreign)}, which this trainer does "
                          f"not write (pickle files can run code when loaded, so they are never read). Remove these "
                          f"files if you trust the folder and it also holds {', '.join(STATE_FILES)}; a checkpoint "
                          f"written by an older version cannot be resumed: start over with --overwrite.")
    missing = [f for f in STATE_FILES if not (folder / f).exists()]
    if missing:
        raise ResumeError(f"Cannot resume from {folder}: incomplete checkpoint (missing {', '.join(missing)}). Pass "
                          f"an earlier checkpoint with --resume PATH, or start over with --overwrite.")


def load_training_state(folder: Path, model, optimizer, scheduler) -> None:
    """Restore ``model`` (strict), ``optimizer`` and ``scheduler`` from ``folder``; a ResumeError if unreadable."""
    folder = Path(folder)
    try:
        missing, unexpected = load_model(model, str(folder / MODEL), strict=False)
        meta = json.loads((folder / OPT_META).read_text())
        optimizer.load_state_dict(optimizer_state(load_file(str(folder / OPT_TENSORS)), meta))
        scheduler.load_state_dict(json.loads((folder / SCHEDULER).read_text()))
    except Exception as e:   # OSError, ValueError, KeyError, RuntimeError, safetensors' SafetensorError
        raise ResumeError(f"Cannot resume from {folder}: a file is unreadable or does not match this model "
                          f"({type(e).__name__}: {str(e)[:300]}). Pass an earlier checkpoint with --resume PATH, or "
                          f"start over with --overwrite.") from None
    if missing or unexpected:
        raise ResumeError(f"Cannot resume from {folder}: its weights do not match this model (missing "
                          f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}). Resume with the recipe that "
                          f"wrote it, or start over with --overwrite.")
