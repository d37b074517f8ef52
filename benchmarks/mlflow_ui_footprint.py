"""Processes and memory of `mlflow ui` as MLflow starts it, and as `make mlflow-ui` does.

    python benchmarks/mlflow_ui_footprint.py --store mlruns/mlflow.db

Starts each variant on a free loopback port in a session of its own, waits until
/health answers and the first page loaded, then counts the session's processes and
sums their resident (RSS) and proportional (PSS: shared pages divided among the
sharers) memory from /proc; stops the session and goes on. Linux only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from medimg.team.mlflow_server import stop_process_group, wait_until_answers
from medimg.team.stack import free_port

VARIANTS = {
    "mlflow ui (defaults)": ([], {}),
    "make mlflow-ui (--workers 1, no job runner)": (
        ["--workers", "1"],
        {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    ),
}
SETTLE_S = 20  # workers and job consumers start after /health first answers


def session_processes(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return pids


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields["Rss"], fields["Pss"]


def measure(
    store: Path, args: list[str], env: dict[str, str], log: Path
) -> tuple[int, float, float]:
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store}"]
    command += ["--host", "127.0.0.1", "--port", str(port), *args]
    with log.open("ab") as output:
        server = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answers(url, server, log, timeout_s=120)
        with urllib.request.urlopen(url, timeout=30):  # the UI's first page
            pass
        time.sleep(SETTLE_S)
        pids = session_processes(server.pid)
        memory = [memory_kib(pid) for pid in pids]
        rss, pss = (sum(m[i] for m in memory) / 1024**2 for i in (0, 1))
        return len(pids), rss, pss
    finally:
        stop_process_group(server.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="an MLflow sqlite database")
    options = parser.parse_args()
    print(f"{'variant':<46} processes  RSS GiB  PSS GiB")
    for name, (args, env) in VARIANTS.items():
        with tempfile.TemporaryDirectory() as folder:
            log = Path(folder) / "mlflow.log"
            count, rss, pss = measure(options.store.resolve(), args, env, log)
        print(f"{name:<46} {count:>9}  {rss:>7.2f}  {pss:>7.2f}")


if __name__ == "__main__":
    main()
