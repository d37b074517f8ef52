"""Fixtures shared by several test modules.

Cluster fixtures (tests marked `cluster`): a real PostgreSQL 15 cluster and a
real `mlflow server` on it, on free loopback ports, started once per session
through the same code as `medimg stack start` (medimg.team) and stopped
at the end, also when tests fail. Without PostgreSQL's server binaries these
tests fail, saying what to install: team mode is part of what CI proves.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from medimg.team import StackError
from medimg.team.postgres import pg_binaries
from medimg.team.stack import Stack, free_port, start_stack, stop_stack


@pytest.fixture(scope="session")
def cluster_stack() -> Iterator[Stack]:
    """A started team stack: `.tracking_uri` (MLflow server), `.optuna_storage`, `.database_url()`.

    Shared by the whole session: tests that write to it use their own experiment
    names or databases. Non-durable (no fsync): start-up takes seconds, not more.
    """
    try:
        pg_binaries()
    except StackError as err:
        pytest.fail(str(err), pytrace=False)
    # Not under pytest's tmp_path: as root the cluster runs as `postgres`, who cannot
    # enter /tmp/pytest-of-root (mode 0700); mkdtemp's folder is opened to it here.
    folder = Path(tempfile.mkdtemp(prefix="medimg-cluster-"))
    folder.chmod(0o755)
    stack_dir = folder / "stack"
    try:
        yield start_stack(
            stack_dir,
            pg_port=free_port(),
            mlflow_port=free_port(),
            durable=False,
            mlflow_workers=1,
            log=lambda message: None,
        )
    finally:
        if (stack_dir / "pgdata" / "PG_VERSION").is_file():
            stop_stack(stack_dir)
        shutil.rmtree(folder, ignore_errors=True)
