"""The committed dvc.lock matches the committed code, and an edit re-runs only what uses it.

Run on a copy of the repository's files (what git tracks, and new files it does not
ignore): no pipeline output is there, as on a fresh clone, and `dvc status --json`
still reports "modified" for every dep whose hash differs from dvc.lock (FACTS:
DVC 3.67). So:
- a stage whose code, params or embedded sample changed without `dvc repro` (a stale
  dvc.lock, every report row "(dirty)", a `dvc pull` that retrains anyway) fails the
  first test, naming the stage and the file;
- editing one model's module touches only the stages of the runs that use it (and the
  tune, confirm and report stages, which depend on the whole zoo: a study's run is
  chosen in params.yaml, which dvc.yaml cannot follow to its model), and editing the
  report's code touches the report only.

Deps that are other stages' outputs (the report's reports/runs/) are left out: a fresh
clone holds only the part of them git does (metrics, plot data), never their hash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medimg.config.params import load_params

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's files (tracked, or new and not ignored) in a fresh git repository."""
    root = tmp_path_factory.mktemp("project")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a deleted, not yet committed file is still listed
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def _outputs(root: Path) -> set[str]:
    """Every stage's outputs, as dvc.lock names them."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def _is_output(path: str, outputs: set[str]) -> bool:
    """`path` is an output, inside one, or a folder holding some."""
    return any(
        path == out or path.startswith(f"{out}/") or out.startswith(f"{path}/") for out in outputs
    )


def changed_deps(root: Path) -> dict[str, set[str]]:
    """{stage: deps and params whose hash or value differs from dvc.lock}, outputs aside."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    assert result.returncode == 0, result.stderr
    outputs = _outputs(root)
    changed: dict[str, set[str]] = {}
    for stage, entries in json.loads(result.stdout or "{}").items():
        for entry in entries:
            if not isinstance(entry, dict):  # "always changed", "changed command"
                changed.setdefault(stage, set()).add(str(entry))
                continue
            for path, state in entry.get("changed deps", {}).items():
                if state == "modified" and not _is_output(path, outputs):
                    changed.setdefault(stage, set()).add(path)
                elif isinstance(state, dict):  # a params file: {key: "modified" | ...}
                    changed.setdefault(stage, set()).update(f"{path}:{key}" for key in state)
    return changed


def test_the_committed_lock_matches_the_code_params_and_sample(project: Path) -> None:
    stale = changed_deps(project)
    assert not stale, (
        "dvc.lock does not match the code, params or sample it was made with; run "
        "`dvc repro` (make run) and commit dvc.lock with reports/:\n  "
        + "\n  ".join(f"{stage}: {sorted(paths)}" for stage, paths in sorted(stale.items()))
    )


def _edit(root: Path, rel: str) -> None:
    with (root / rel).open("a") as file:
        file.write("\n# an edit\n")


def test_editing_a_model_touches_only_the_stages_that_use_it(project: Path) -> None:
    params = load_params(project / "params.yaml")
    before = changed_deps(project)
    _edit(project, "src/medimg/models/zoo/xray_cnn.py")
    after = changed_deps(project)
    touched = {stage for stage in after if after[stage] != before.get(stage, set())}
    users = {name for name, run in params.runs.items() if run.model == "xray_cnn"}
    expected = {f"{stage}@{run}" for run in users for stage in ("train", "evaluate")}
    expected |= {f"{stage}@{study}" for study in params.tune for stage in ("tune", "confirm")}
    expected |= {"report"}
    assert touched == expected
    assert not any(stage.startswith(("fetch", "split", "augment")) for stage in touched)


def test_editing_the_report_touches_only_the_report(project: Path) -> None:
    before = changed_deps(project)
    _edit(project, "src/medimg/reporting/tables.py")
    after = changed_deps(project)
    touched = {stage for stage in after if after[stage] != before.get(stage, set())}
    assert touched == {"report"}
