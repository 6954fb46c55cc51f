"""Checkpoints of one run: ``<output_dir>/checkpoints/step_XXXXXXX/`` (model, optimizer and schedule as safetensors +
JSON, see `safe_state`: nothing in a checkpoint is ever unpickled; plus ``trainer_state.json`` and ``recipe.json``). Saved atomically (written to a temp folder, then renamed: a
checkpoint folder is complete or absent), the newest ``keep`` kept, found by step, and refused on resume when the
recipe's fingerprint differs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from ..errors import CheckpointError, ResumeError
from .safe_state import STATE_FILES, check_checkpoint_files, load_training_state, save_training_state

STATE_FILE = "trainer_state.json"
RECIPE_FILE = "recipe.json"
RUN_MARKERS = ("metrics.jsonl", "config.json", "model.safetensors")  # files an earlier run leaves
KEEP_IN_PLACE = (".run.lock", ".run-holder.json")  # the run lock (runlock.py) stays when an earlier run moves aside


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def fingerprint_diffs(old: dict, new: dict, defaults: dict) -> list[str]:
    """Fields whose value differs between a checkpoint's fingerprint and the current one. A field the checkpoint
    does not record (added since) counts as its default there; fields since removed are ignored."""
    diffs = []
    for sec, fields in new.items():
        for k, now in fields.items():
            then = old.get(sec, {}).get(k, defaults.get(sec, {}).get(k))
            if then != now:
                diffs.append(f"{sec}.{k}: checkpoint {then!r} vs now {now!r}")
    return sorted(diffs)


class CheckpointManager:
    """``track(model, optimizer, scheduler)`` names what `save` writes and `load` restores (see `safe_state`)."""

    def __init__(self, out_dir, accelerator, keep: int):
        self.out_dir, self.accelerator, self.keep = Path(out_dir), accelerator, keep
        self.root = self.out_dir / "checkpoints"
        self.tracked = None

    def track(self, model, optimizer, scheduler):
        self.tracked = (model, optimizer, scheduler)

    def checkpoints(self, out_dir: Optional[Path] = None) -> list[Path]:
        """Complete checkpoints, oldest first."""
        root = Path(out_dir) / "checkpoints" if out_dir else self.root
        if not root.exists():
            return []
        return sorted((p for p in root.iterdir() if p.name.startswith("step_") and (p / STATE_FILE).exists()),
                      key=lambda p: int(p.name.split("_")[1]))

    def find(self, resume) -> Optional[Path]:
        """``resume``: None (start fresh), "latest" (the newest of this run; an error when none), "auto" (the newest,
        if any), or a checkpoint folder or a run folder."""
        if resume in (None, "", False):
            return None
        if resume in ("latest", "auto", True):
            found = self.checkpoints()
            if not found and resume != "auto":
                raise ResumeError(f"--resume: no checkpoint under {self.root}. Start without --resume, or pass the "
                                  f"checkpoint folder: --resume PATH.")
            return found[-1] if found else None
        p = Path(resume)
        if not (p / STATE_FILE).exists() and self.checkpoints(p):
            return self.checkpoints(p)[-1]
        if not (p / STATE_FILE).exists():
            raise ResumeError(f"--resume {resume}: not a checkpoint folder (no {STATE_FILE}). Pass a folder like "
                              f"{self.root}/step_0001000 or a run folder.")
        return p

    def owns(self, ckpt: Path) -> bool:
        return Path(ckpt).resolve().parent == self.root.resolve()

    def adopt(self, ckpt: Path):
        """``--resume PATH`` of another run folder: continue it here (refused if ``out_dir`` holds a run of its own),
        with the source run's metrics log carried over so the log reads like a straight run."""
        earlier = self.earlier_run()
        if earlier:
            raise ResumeError(f"--resume {ckpt}: {self.out_dir} holds another run ({', '.join(earlier[:3])}); resuming "
                              f"into it would mix two runs. Resume into an empty train.output_dir, or into the "
                              f"checkpoint's own run folder {Path(ckpt).parent.parent}.")
        if self.accelerator.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            src = Path(ckpt).parent.parent / RUN_MARKERS[0]
            if src.is_file():
                shutil.copyfile(src, self.out_dir / RUN_MARKERS[0])
        self.accelerator.wait_for_everyone()

    def check_compatible(self, ckpt: Path, recipe) -> dict:
        """The checkpoint's trainer state, if ``recipe`` defines the same run; a ResumeError naming the fix if not."""
        try:
            state = json.loads((ckpt / STATE_FILE).read_text())
            state["fingerprint"], int(state["step"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ResumeError(f"Cannot resume from {ckpt}: {STATE_FILE} is unreadable ({type(e).__name__}: "
                              f"{str(e)[:200]}). Pass an earlier checkpoint with --resume PATH, or start over with "
                              f"--overwrite.") from None
        defaults = _jsonable(type(recipe)().fingerprint())
        diffs = fingerprint_diffs(state["fingerprint"], _jsonable(recipe.fingerprint()), defaults)
        if diffs:
            raise ResumeError(f"Cannot resume from {ckpt}: it was written by a different config:\n  " + "\n  ".join(diffs) +
                              f"\nFix: resume with the recipe and overrides that started the run (saved as {RECIPE_FILE} "
                              "in the checkpoint), or start a new run in another train.output_dir.")
        return state

    def earlier_run(self) -> list[str]:
        """What in ``out_dir`` shows an earlier run (checkpoints, a metrics log, an exported model)."""
        found = [str(p) for p in self.checkpoints()[-1:]]
        return found + [str(self.out_dir / f) for f in RUN_MARKERS if (self.out_dir / f).exists()]

    def start_fresh(self, overwrite: bool = False, log=print):
        """Start a new run in ``out_dir``. An earlier run there is never deleted: without ``overwrite`` this refuses
        (naming --resume and --overwrite); with it the earlier run moves aside to ``<out_dir>.previous-<time>``."""
        earlier = self.earlier_run()
        if earlier and not overwrite:
            raise ResumeError(f"{self.out_dir} holds an earlier run ({', '.join(earlier[:3])}). Continue it with "
                              f"--resume, start over with --overwrite (the earlier run is moved aside to "
                              f"{self.out_dir.name}.previous-<time>, not deleted), or set another train.output_dir.")
        if self.accelerator.is_main_process:
            if earlier:
                aside = self.move_aside()
                log(f"[pretrain] --overwrite: moved the earlier run in {self.out_dir} to {aside}")
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()

    def move_aside(self) -> Path:
        """Move everything in ``out_dir`` (but the run lock) to a new sibling ``<name>.previous-<time>``."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.out_dir.with_name(f"{self.out_dir.name}.previous-{stamp}")
        n = 1
        while aside.exists():
            aside, n = self.out_dir.with_name(f"{self.out_dir.name}.previous-{stamp}-{n}"), n + 1
        aside.mkdir(parents=True)
        for child in self.out_dir.iterdir():
            if child.name not in KEEP_IN_PLACE:
                os.replace(child, aside / child.name)
        return aside

    def save(self, step: int, recipe, trainer_state: dict) -> Path:
        """Write ``step_XXXXXXX`` (main process) atomically: into a temp folder, renamed when complete. A failed
        write (e.g. a full disk) removes the temp folder and raises a CheckpointError on every process."""
        from .runtime import raise_on_every_process
        acc, error = self.accelerator, None
        final = self.root / f"step_{step:07d}"
        if acc.is_main_process:
            state = {**trainer_state, "step": step, "fingerprint": recipe.fingerprint(), "world_size": acc.num_processes}
            try:
                self._save_main(final, recipe, state)
            except CheckpointError as e:
                error = e
        raise_on_every_process(acc, error)
        acc.wait_for_everyone()
        return final

    def _save_main(self, final: Path, recipe, state: dict):
        tmp = final.with_name(".tmp-" + final.name)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            self._write(tmp, recipe, state)
        except Exception as e:   # OSError, or the writers' own errors wrapping one (e.g. safetensors)
            shutil.rmtree(tmp, ignore_errors=True)
            raise self._write_error(tmp, e) from None
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        self._prune()

    def _write_error(self, tmp: Path, e: Exception) -> CheckpointError:
        """A clear error for a failed checkpoint write (the partial folder is already removed)."""
        previous = self.checkpoints()
        kept = f"The previous checkpoint {previous[-1]} is intact" if previous else "No earlier checkpoint exists"
        try:
            usage = shutil.disk_usage(self.root)
            free = f"{usage.free / 2**20:,.0f} MiB free of {usage.total / 2**30:,.1f} GiB"
        except OSError:
            free = "free space unknown"
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e) or "os error 28" in str(e):
            return CheckpointError(f"Cannot write checkpoint {tmp.name[5:]} to {self.root}: the disk is full ({free}); "
                                   f"the partial folder was removed. {kept}. Free space on that disk (or set "
                                   f"train.output_dir to another disk), then run again with --resume.")
        return CheckpointError(f"Cannot write checkpoint {tmp.name[5:]} to {self.root}: {type(e).__name__}: {e} "
                               f"({free}); the partial folder was removed. {kept}. Fix the cause, then run again "
                               f"with --resume.")

    def _write(self, folder: Path, recipe, state: dict):
        model, optimizer, scheduler = self.tracked
        save_training_state(folder, self.accelerator.unwrap_model(model), optimizer, scheduler)
        (folder / STATE_FILE).write_text(json.dumps(state, indent=1, default=str))
        (folder / RECIPE_FILE).write_text(json.dumps(recipe.to_dict(), indent=1, default=str))

    def _prune(self):
        for old in self.checkpoints()[:-self.keep] if self.keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, ckpt: Path):
        """Restore model, optimizer and schedule (the trainer state comes from `check_compatible`). Nothing is
        unpickled: a folder with files this format does not write is refused before anything is read."""
        check_checkpoint_files(ckpt, STATE_FILES + (STATE_FILE, RECIPE_FILE))
        model, optimizer, scheduler = self.tracked
        load_training_state(ckpt, self.accelerator.unwrap_model(model), optimizer, scheduler)
