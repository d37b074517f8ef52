"""An `mlflow server` process: started in a process group of its own, waited for, stopped.

The group lets `stop_process_group` end the server and every worker it forked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from medimg.team import StackError, url_host

MLFLOW_START_TIMEOUT_S = 120  # the first start migrates a fresh database: ~20 s on a 2-core CPU
STOP_TIMEOUT_S = 15


def start_mlflow_server(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str,
    port: int,
    log_file: Path,
    workers: int | None = None,
    timeout_s: float = MLFLOW_START_TIMEOUT_S,
) -> subprocess.Popen:
    """Start `mlflow server` in a process group of its own; return it once /health answers.

    The group lets `stop_process_group` end the server and every worker it forked.
    """
    env = {
        **os.environ,
        # Not on the command line, where `ps` would show the password to every user.
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
        # MLflow's GenAI job runner: eight idle processes that medimg never uses.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port)]
    command += ["--serve-artifacts", "--artifacts-destination", artifacts_destination]
    if workers:
        command += ["--workers", str(workers)]
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_until_answers(f"http://{url_host(host)}:{port}", process, log_file, timeout_s)
    except BaseException:
        stop_process_group(process.pid)
        raise
    return process


def _last_line(log_file: Path) -> str:
    lines = log_file.read_text(errors="replace").strip().splitlines() if log_file.is_file() else []
    return lines[-1].strip() if lines else "no output"


def wait_until_answers(
    url: str, process: subprocess.Popen | None, log_file: Path, timeout_s: float
) -> None:
    """Poll `url`/health until it answers 200; a StackError if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StackError(
                f"the MLflow server for {url} exited (code {process.returncode}) before "
                f"answering: {_last_line(log_file)} (log: {log_file})"
            )
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise StackError(
        f"the MLflow server did not answer at {url}/health within {timeout_s:.0f} s: "
        f"{_last_line(log_file)} (log: {log_file})"
    )


def stop_process_group(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group that `pid` leads, SIGKILL what is left after `timeout_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap the leader when it is our own child
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    raise StackError(f"process group {pid} survived SIGKILL")


def running_mlflow_pid(folder: Path) -> int | None:
    """The pid in folder/mlflow.pid when that process is alive and is an `mlflow server`.

    The check of its command line keeps a stale pid file (the pid reused by
    another program after a reboot) from making `stop` kill something else.
    """
    pid_file = folder / "mlflow.pid"
    if not pid_file.is_file():
        return None
    pid = int(pid_file.read_text())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return None
    return pid if b"mlflow" in cmdline and b"server" in cmdline else None
