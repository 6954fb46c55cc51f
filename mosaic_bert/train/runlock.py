"""One run per output folder: the main process holds an OS file lock (``filelock``; released by the kernel when the
process ends, so a killed run leaves no stale lock) on ``<output_dir>/.run.lock`` for the run's lifetime, and writes
who holds it (pid, host, start time, command) to ``.run-holder.json`` so a second run can name the holder."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

from ..errors import RunLockedError

LOCK_FILE, HOLDER_FILE = ".run.lock", ".run-holder.json"


class RunLock:
    def __init__(self, out_dir):
        from filelock import FileLock
        self.out_dir = Path(out_dir)
        self.lock = FileLock(str(self.out_dir / LOCK_FILE), timeout=0)

    def holder(self) -> str:
        try:
            h = json.loads((self.out_dir / HOLDER_FILE).read_text())
            return f"pid {h['pid']} on host {h['host']}, started {h['started']} ({' '.join(h['command'])[:200]})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process (it has not written its pid yet)"

    def acquire(self) -> "RunLock":
        from filelock import Timeout
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            raise RunLockedError(f"train.output_dir {self.out_dir} is in use by another run: {self.holder()}. Wait for "
                                 f"it to finish or stop it, or set another train.output_dir.") from None
        holder = {"pid": __import__("os").getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": sys.argv}
        (self.out_dir / HOLDER_FILE).write_text(json.dumps(holder))
        return self

    def release(self):
        if self.lock.is_locked:
            (self.out_dir / HOLDER_FILE).unlink(missing_ok=True)
            self.lock.release()


def lock_run(out_dir, accelerator):
    """The main process locks ``out_dir``; every process raises the same RunLockedError when it is taken."""
    from .runtime import raise_on_every_process
    error, lock = None, None
    if accelerator.is_main_process:
        try:
            lock = RunLock(out_dir).acquire()
        except RunLockedError as e:
            error = e
    raise_on_every_process(accelerator, error)
    return lock
