"""`medimg stack start|stop|status`: the team stack's life cycle through the real command.

Each test that starts servers runs its own stack in a folder of its own
(tests/conftest.py's session stack stays untouched), on free loopback ports.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import requests

from medimg.team.stack import free_port, stop_stack


def _medimg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MEDIMG_"))}
    env["MLFLOW_WORKERS"] = "1"  # `mlflow server` reads it; its default of 4 is a lab's, not CI's
    return subprocess.run(
        [sys.executable, "-m", "medimg.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _exports(stdout: str) -> dict[str, str]:
    """`export NAME=value` lines -> {NAME: value}; anything else on stdout fails the test."""
    lines = stdout.strip().splitlines()
    assert all(line.startswith("export ") for line in lines), stdout
    return dict(line.removeprefix("export ").split("=", 1) for line in lines)


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    """A folder the `postgres` user can enter (see conftest.py); its stack is stopped at the end."""
    folder = Path(tempfile.mkdtemp(prefix="medimg-stack-test-"))
    folder.chmod(0o755)
    yield folder / "stack"
    if (folder / "stack" / "pgdata" / "PG_VERSION").is_file():
        stop_stack(folder / "stack")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.cluster
def test_start_status_stop_and_start_again(stack_dir: Path) -> None:
    ports = ["--port-pg", str(free_port()), "--port-mlflow", str(free_port())]
    cwd = stack_dir.parent
    started = _medimg("stack", "start", "--dir", str(stack_dir), *ports, cwd=cwd)
    assert started.returncode == 0, started.stderr
    exports = _exports(started.stdout)
    assert sorted(exports) == ["MEDIMG_OPTUNA_STORAGE", "MLFLOW_TRACKING_URI"]
    assert requests.get(f"{exports['MLFLOW_TRACKING_URI']}/health", timeout=5).status_code == 200
    # the storage a worker gets is a real Optuna storage
    study = optuna.create_study(study_name="s", storage=exports["MEDIMG_OPTUNA_STORAGE"])
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert (stack_dir / "stack.json").stat().st_mode & 0o077 == 0  # it holds the password

    again = _medimg("stack", "start", "--dir", str(stack_dir), *ports, cwd=cwd)
    assert again.returncode == 0, again.stderr
    assert again.stdout == started.stdout  # idempotent: nothing new started
    assert "creating" not in again.stderr and "starting" not in again.stderr
    status = _medimg("stack", "status", "--dir", str(stack_dir), cwd=cwd)
    assert "postgres: running on 127.0.0.1" in status.stdout
    assert f"mlflow: running on {exports['MLFLOW_TRACKING_URI']}" in status.stdout
    moved = _medimg("stack", "start", "--dir", str(stack_dir), "--port-mlflow", "1", cwd=cwd)
    assert moved.returncode == 2
    assert f"the stack in {stack_dir} already runs" in moved.stderr
    assert len(moved.stderr.strip().splitlines()) == 1

    server_pid = int((stack_dir / "mlflow.pid").read_text())
    stopped = _medimg("stack", "stop", "--dir", str(stack_dir), cwd=cwd)
    assert stopped.returncode == 0, stopped.stderr
    assert "MLflow server" in stopped.stdout and "PostgreSQL" in stopped.stdout
    assert not Path(f"/proc/{server_pid}").exists()
    status = _medimg("stack", "status", "--dir", str(stack_dir), cwd=cwd)
    assert status.stdout.splitlines() == ["postgres: stopped", "mlflow: stopped"]

    # after a stop (a reboot), the same command brings the same data back
    restarted = _medimg("stack", "start", "--dir", str(stack_dir), *ports, cwd=cwd)
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout == started.stdout
    assert "creating" not in restarted.stderr
    reloaded = optuna.load_study(study_name="s", storage=exports["MEDIMG_OPTUNA_STORAGE"])
    assert len(reloaded.trials) == 2


@pytest.mark.cluster
def test_port_in_use_fails_before_anything_is_created(stack_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _medimg(
            "stack", "start", "--dir", str(stack_dir), "--port-pg", str(port), cwd=stack_dir.parent
        )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"medimg stack: error: port {port} on 127.0.0.1 is in use (Address already in use); "
        "stop what listens there or choose another with --port-pg"
    )
    assert not stack_dir.exists()


def test_missing_postgresql_binaries_say_what_to_install(tmp_path: Path) -> None:
    result = _medimg("stack", "start", "--pg-bin", str(tmp_path / "none"), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "PostgreSQL 15 server binaries not found" in result.stderr
    assert "apt-get install postgresql-15" in result.stderr
    assert not (tmp_path / ".medimg-stack").exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "8.8.8.8", "lab-server"])
def test_only_loopback_or_private_addresses_are_accepted(host: str, tmp_path: Path) -> None:
    result = _medimg("stack", "start", "--host", host, cwd=tmp_path)
    assert result.returncode == 2
    assert f"--host {host!r}: give the address workers will connect to" in result.stderr
    assert not (tmp_path / ".medimg-stack").exists()


def test_stop_without_a_stack_names_the_folder(tmp_path: Path) -> None:
    result = _medimg("stack", "stop", "--dir", str(tmp_path / "nothing"), cwd=tmp_path)
    assert result.returncode == 2
    assert f"no team stack in {tmp_path / 'nothing'}" in result.stderr
