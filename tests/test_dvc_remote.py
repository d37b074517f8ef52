"""A DVC remote shares the data stages' outputs: push from one clone, pull into another.

In a temporary copy of the repository, `dvc repro augment@chest_xray` (fetch,
split and augment of the embedded X-ray sample: the data stages only, which
keeps it under a minute), then `dvc push` to a local-folder remote. A second
clone (git clone: committed files, dvc.lock and the remote's config, an empty
cache) `dvc pull`s the same outputs, byte for byte, and `dvc repro` there has
nothing to run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The copy of tracked and untracked-but-not-ignored files that the end-to-end test uses.
from test_pipeline_e2e import _copy_repository

pytestmark = pytest.mark.slow  # each test trains, or runs a server

TARGET = "augment@chest_xray"
DATA_OUTPUTS = ("data/raw/chest_xray", "data/splits/chest_xray", "data/prepared/chest_xray")
GIT = ["git", "-c", "user.name=medimg-test", "-c", "user.email=test@medimg.invalid"]


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed in {cwd}:\n{output[-4000:]}"
    return output


def _digests(repo: Path) -> dict[str, str]:
    """{path relative to repo: sha256} of every file of the data outputs, whatever their layout."""
    return {
        str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
        for output in DATA_OUTPUTS
        for path in sorted((repo / output).rglob("*"))
        if path.is_file()
    }


def test_pushed_outputs_are_pulled_into_another_clone_and_nothing_reruns(
    tmp_path: Path,
) -> None:
    first, second, remote = tmp_path / "first", tmp_path / "second", tmp_path / "remote"
    first.mkdir()
    _copy_repository(first)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MEDIMG_"))}
    # dvc's stage commands call `python`: make it this interpreter, with medimg installed.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    dvc = [sys.executable, "-m", "dvc"]
    _run([*dvc, "repro", TARGET], first, env)
    _run([*dvc, "remote", "add", "-d", "storage", str(remote)], first, env)
    pushed = _run([*dvc, "push", TARGET, "--with-deps"], first, env)
    assert "pushed" in pushed
    _run([*GIT, "add", "-A"], first, env)
    _run([*GIT, "commit", "-qm", "data stages and the DVC remote"], first, env)

    _run([*GIT, "clone", "-q", str(first), str(second)], tmp_path, env)
    assert not (second / ".dvc" / "cache").exists()
    assert not any((second / output).exists() for output in DATA_OUTPUTS)
    _run([*dvc, "pull", TARGET, "--with-deps"], second, env)
    assert _digests(second) == _digests(first)
    assert any(path.endswith(".npy") for path in _digests(second))

    rerun = _run([*dvc, "repro", TARGET], second, env)
    assert "Running stage" not in rerun
    for stage in ("fetch@chest_xray", "split@chest_xray", TARGET):
        assert f"Stage '{stage}' didn't change, skipping" in rerun
    status = _run([*dvc, "status", TARGET, "--with-deps"], second, env)
    assert "Data and pipelines are up to date." in status
