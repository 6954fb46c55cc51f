"""Faults a run must survive without losing anything (issue 16, must-fix 1-4 and 7): a forgotten --resume, a crafted
checkpoint, two runs in one folder, SIGTERM/SIGINT, a full disk. Each test reproduces the fault first; the pretraining
ones run the real script on a tiny model (tests/train/test_pretrain.py's settings), a few seconds each."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "train"))
from test_pretrain import ROOT, SCRIPT, losses, run, tiny_args  # noqa: E402

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("faults-cache")


def short(out, cache, **extra):
    return tiny_args(out, cache, **{"train.max_duration": "8ba", "train.eval_interval": 8, **extra})


def tree(folder: Path) -> dict:
    """Every file under ``folder`` with its size and modification time (to show nothing was touched)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------------ 1. a forgotten --resume
def test_new_run_in_a_folder_with_checkpoints_refuses_and_keeps_them(cache, tmp_path):
    out = tmp_path / "run"
    run(short(out, cache))
    before = tree(out)
    p = run(short(out, cache), check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "--resume" in p.stderr and "--overwrite" in p.stderr, p.stderr[-2000:]
    assert tree(out) == before                                   # nothing deleted, nothing rewritten
    p = run(short(out, cache) + ["--overwrite"])                 # a deliberate start-over keeps the old run aside
    aside = [d for d in tmp_path.iterdir() if d.name.startswith("run.previous-")]
    assert len(aside) == 1 and tree(aside[0]) == before, (aside, p.stdout[-2000:])
    assert "moved" in p.stdout and str(aside[0]) in p.stdout
    assert [s for s, _ in losses(out)[0]] == list(range(1, 9))   # the new run's log only


# ------------------------------------------------------------------------------------------------ 2. code in a checkpoint
class _Payload:
    """Unpickling this runs a shell command that writes ``marker``: what a crafted checkpoint file can do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"echo ran > {self.marker}",)


@pytest.fixture(scope="module")
def finished(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    run(short(out, cache))
    return out


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_resume_never_unpickles_a_checkpoint_file(finished, cache, tmp_path, name):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    marker = tmp_path / "marker"
    (out / "checkpoints" / "step_0000008" / name).write_bytes(pickle.dumps(_Payload(marker)))
    p = run(short(out, cache), resume="latest", check=False)
    assert not marker.exists(), "a file in the checkpoint ran code on --resume"
    assert p.returncode == 2 and name in p.stderr and "code" in p.stderr, p.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ 3. two runs, one folder
def wait_for(cond, timeout=120, what="condition"):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def started(out: Path, step: int = 2) -> bool:
    """The run in ``out`` has logged optimizer step ``step``."""
    try:
        return any(json.loads(line).get("step", 0) >= step and "loss" in line
                   for line in (out / "metrics.jsonl").read_text().splitlines())
    except (OSError, ValueError):
        return False


def background_run(args, extra=()):
    return subprocess.Popen([sys.executable, str(SCRIPT)] + args + list(extra), cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_second_run_in_a_busy_folder_fails_naming_the_holder(cache, tmp_path, flag):
    out = tmp_path / "run"
    first = background_run(short(out, cache, **{"train.max_duration": "2000ba", "train.checkpoint_interval": 2}))
    try:
        wait_for(lambda: started(out, 3) or first.poll() is not None, what="the first run to train")
        assert first.poll() is None, first.communicate()[1][-2000:]
        p = run(short(out, cache, **{"train.max_duration": "2000ba", "train.checkpoint_interval": 2}) + [flag],
                check=False)
        assert p.returncode == 2 and "in use" in p.stderr and f"pid {first.pid}" in p.stderr, p.stderr[-2000:]
        assert not [d for d in tmp_path.iterdir() if ".previous-" in d.name]      # the first run was not moved
        assert first.poll() is None and started(out, 4)                            # and goes on
    finally:
        first.kill()
        first.communicate()
