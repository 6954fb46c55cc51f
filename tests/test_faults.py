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
    """Every file of the run under ``folder`` with its size and modification time (to show nothing was touched);
    the run lock, which belongs to the folder rather than to a run, left out."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and p.name not in (".run.lock", ".run-holder.json")}


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


# ------------------------------------------------------------------------------------------------ 4. SIGTERM / SIGINT
SIGNAL_AT = """
import os, signal, sys
from mosaic_bert.train.cli import main
from mosaic_bert.train.state import Callback

class SignalAt(Callback):   # real signals to this process after optimizer step N, as a cluster would send them
    def __init__(self, step, times):
        self.step, self.times = step, times

    def on_step_end(self, trainer):
        if trainer.state.step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGTERM)

sys.exit(main(sys.argv[3:], callbacks=[SignalAt(int(sys.argv[1]), int(sys.argv[2]))]))
"""


def run_with_signal_at(step, times, args):
    return subprocess.run([sys.executable, "-c", SIGNAL_AT, str(step), str(times)] + args, cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))


def test_sigterm_saves_at_the_step_boundary_and_resume_is_exact(finished, cache, tmp_path):
    out = tmp_path / "run"
    p = run_with_signal_at(5, 1, short(out, cache))
    assert p.returncode == 143, (p.returncode, p.stderr[-3000:])
    assert checkpoint_steps(out) == [4, 5] and "--resume" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    run(short(out, cache), resume="latest")
    (tr1, ev1), (tr2, ev2) = losses(finished), losses(out)
    assert [s for s, _ in tr2] == [s for s, _ in tr1] == list(range(1, 9))
    assert [s for s, _ in ev2] == [s for s, _ in ev1] == [0, 8]
    for (s1, a), (s2, b) in zip(tr1 + ev1, tr2 + ev2, strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-6, abs=1e-6), (s1, a, b)


def test_second_signal_exits_at_once(cache, tmp_path):
    out = tmp_path / "run"
    p = run_with_signal_at(5, 2, short(out, cache, **{"train.checkpoint_interval": 100}))
    assert p.returncode == 143 and "second signal" in p.stderr, (p.returncode, p.stderr[-3000:])
    assert checkpoint_steps(out) == []


def test_sigint_from_outside_saves_and_exits_130(cache, tmp_path):
    out = tmp_path / "run"
    proc = background_run(short(out, cache, **{"train.max_duration": "2000ba", "train.checkpoint_interval": 1000}))
    try:
        wait_for(lambda: started(out, 3) or proc.poll() is not None, what="the run to train")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "KeyboardInterrupt" not in err, (proc.returncode, err[-3000:])
    steps = checkpoint_steps(out)
    assert len(steps) == 1 and 3 <= steps[0] < 2000 and f"step {steps[0]}" in err, (steps, err[-2000:])


# ------------------------------------------------------------------------------------------------ 7. disk full
DISK_FULL_AT = """
import errno, sys
import mosaic_bert.train.safe_state as safe_state
from mosaic_bert.train.cli import main

real, calls = safe_state.save_file, []

def full_disk(tensors, path, *a, **k):   # the second checkpoint's optimizer file: half written, then ENOSPC
    calls.append(path)
    if len(calls) == 2:
        open(path, "wb").write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", path)
    return real(tensors, path, *a, **k)

safe_state.save_file = full_disk
sys.exit(main(sys.argv[1:]))
"""


def test_disk_full_while_saving_says_so_and_keeps_the_previous_checkpoint(cache, tmp_path):
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", DISK_FULL_AT] + short(out, cache), cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "Traceback" not in p.stderr, (p.returncode, p.stderr[-3000:])
    assert "disk is full" in p.stderr and str(out / "checkpoints") in p.stderr and "step_0000004" in p.stderr
    assert checkpoint_steps(out) == [4] and not list((out / "checkpoints").glob(".tmp*"))
    run(short(out, cache), resume="latest")             # the previous checkpoint is intact: the run continues from it
    assert [s for s, _ in losses(out)[0]] == list(range(1, 9))


# ------------------------------------------------------------------------------------------------ should-fix, end to end
def test_eval_samples_0_records_no_held_out_loss(cache, tmp_path):
    out = tmp_path / "run"
    p = run(short(out, cache, **{"train.eval_samples": 0, "train.max_duration": "4ba"}))
    assert not losses(out)[1], "a held-out loss was recorded without held-out samples"
    card = (out / "README.md").read_text()
    assert "0.0000" not in card and "No held-out evaluation" in card, card
    assert "held-out MLM loss" not in p.stdout


def test_resume_path_into_a_new_folder(finished, cache, tmp_path):
    out = tmp_path / "new"
    run(short(out, cache), resume=str(finished / "checkpoints" / "step_0000004"))
    (tr1, ev1), (tr2, ev2) = losses(finished), losses(out)
    assert [s for s, _ in tr2] == [s for s, _ in tr1] == list(range(1, 9))
    assert [s for s, _ in ev2] == [s for s, _ in ev1] == [0, 8]
    for (s1, a), (s2, b) in zip(tr1 + ev1, tr2 + ev2, strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-6, abs=1e-6), (s1, a, b)
    assert tree(finished / "checkpoints")                               # the source run is untouched
    p = run(short(out, cache), resume=str(finished / "checkpoints" / "step_0000004"), check=False)
    assert p.returncode == 2 and "holds another run" in p.stderr, p.stderr[-2000:]   # would mix two runs


@pytest.mark.parametrize("damage", ["truncate optimizer.safetensors", "garble model.safetensors",
                                    "garble trainer_state.json", "delete scheduler.json"])
def test_damaged_checkpoint_is_a_clear_error(finished, cache, tmp_path, damage):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    verb, name = damage.split()
    f = out / "checkpoints" / "step_0000008" / name
    if verb == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif verb == "garble":
        f.write_bytes(b"{not json or safetensors" + f.read_bytes()[40:])
    else:
        f.unlink()
    p = run(short(out, cache), resume="latest", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "step_0000008" in p.stderr and "--resume PATH" in p.stderr, p.stderr[-2000:]
