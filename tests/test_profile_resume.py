"""A profile's `dvc exp run` killed mid-way resumes with the same command.

The cpu-check profile takes hours on a laptop; a working session may end in the middle
(README, "What the real data gives on a laptop"). In a scratch git repository made of
the repository's files, `dvc exp run -S profile=sample evaluate@mri_cnn_thesis` is
killed, its whole process group with SIGKILL (a closed laptop lid or a killed terminal
gives no chance to clean up), as soon as the train stage has started: when its run lock
appears, that is after the data stages finished. The same command again must finish,
re-running neither fetch, split nor augment, and leave one MLflow parent run of the
configuration with its one seed, finished.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_compare_loop import git, run
from test_pipeline_e2e import _copy_repository, pipeline_env

pytestmark = pytest.mark.e2e

RUN = "mri_cnn_thesis"
DATA_STAGES = ("fetch@brain_tumor_mri", "split@brain_tumor_mri", "augment@brain_tumor_mri")
COMMAND = [sys.executable, "-m", "dvc", "exp", "run", "-S", "profile=sample", f"evaluate@{RUN}"]


def _kill_once_training_started(repo: Path, env: dict[str, str]) -> str:
    lock = repo / ".medimg-work" / "locks" / f"{RUN}.lock"
    with subprocess.Popen(
        COMMAND,
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: DVC and the stage it runs
    ) as process:
        deadline = time.monotonic() + 600
        while not lock.exists():
            assert process.poll() is None, f"dvc exp run ended first:\n{process.stdout.read()}"
            assert time.monotonic() < deadline, "the train stage did not start in 10 minutes"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
        output = process.stdout.read()
    assert process.returncode == -signal.SIGKILL
    return output


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = tmp_path_factory.mktemp("resume")
    _copy_repository(repo)
    env = {**pipeline_env(), "DVC_NO_ANALYTICS": "1"}
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the code")
    first = _kill_once_training_started(repo, env)
    second = run(COMMAND, repo, env)
    return {"repo": repo, "first": first, "second": second}


def test_the_killed_run_had_finished_the_data_stages(resumed: dict) -> None:
    for stage in DATA_STAGES:
        assert f"Running stage '{stage}'" in resumed["first"]
    assert f"Running stage 'train@{RUN}'" in resumed["first"]


def test_the_same_command_skips_what_finished_and_completes_the_rest(resumed: dict) -> None:
    second = resumed["second"]
    for stage in DATA_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in second
        assert f"Running stage '{stage}'" not in second
    assert f"Running stage 'train@{RUN}'" in second
    assert f"Running stage 'evaluate@{RUN}'" in second
    assert "Ran experiment(s)" in second
    assert (resumed["repo"] / "reports" / "runs" / RUN / "metrics.json").is_file()


def test_mlflow_holds_one_finished_parent_with_its_one_seed(resumed: dict) -> None:
    database = resumed["repo"] / "mlruns" / "mlflow.db"
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT name, status FROM runs WHERE lifecycle_stage = 'active' AND name LIKE ?",
            (f"{RUN}%",),
        ).fetchall()
    assert sorted(rows) == [(RUN, "FINISHED"), (f"{RUN}/seed-0", "FINISHED")]
