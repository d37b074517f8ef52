"""One training of a configuration at a time: a lock file per run name.

Two `medimg train --run X` at once would share (and wipe) one work folder and mix
both trainings into one MLflow run. The lock is an OS advisory lock (fcntl.flock)
on `.medimg-work/locks/<run>.lock`: the kernel releases it when its process ends,
however it ends, so a lock left by a killed process is taken over at once, with no
stale-lock guessing. The file also records its holder (pid, host, start time) for
the message a second training gets. flock works between processes of one machine;
on a network filesystem use one work folder per machine (the default, under the
repository).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medimg.errors import UserError


class RunLockedError(UserError, RuntimeError):
    """Another process is training the same configuration."""


@contextmanager
def exclusive_run(lock_file: Path, what: str) -> Iterator[None]:
    """Hold the lock `lock_file` while the block runs; RunLockedError at once if it is held.

    what: named in the error, e.g. "run 'xray_cnn'".
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{what} is already being trained by {_holder(lock_file)} ({lock_file}); "
                "wait for it to finish or stop that process"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _holder(lock_file: Path) -> str:
    try:
        holder = json.loads(lock_file.read_text())
        return f"pid {holder['pid']} on {holder['host']} since {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
