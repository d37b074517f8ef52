"""docs/design.md's "Add a model", followed to the letter in a scratch copy of the repository.

The module and the params entry are read from the document itself, so the guide and
what is tested cannot drift apart. Then fetch, split, augment and train run as DVC
runs them (stages/*.py) on the embedded X-ray sample, for one epoch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def guide_blocks() -> tuple[str, str]:
    """The Python and YAML blocks of the "Add a model" section, in that order."""
    text = (REPO / "docs" / "design.md").read_text()
    section = text.split("\n## Add a model\n", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S)
    entry = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert python and entry, "docs/design.md's 'Add a model' lost its code blocks"
    return python.group(1), entry.group(1)


def test_a_model_added_as_the_guide_says_trains_on_the_sample(tmp_path: Path) -> None:
    module, entry = guide_blocks()
    run_name, run = next(iter(yaml.safe_load(entry).items()))
    model = run["model"]
    for part in ("src", "stages"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("*.egg-info"))
    shutil.copytree(REPO / "data/sample/chest_xray", tmp_path / "data/sample/chest_xray")
    # step 1: the module, under the name the params entry uses
    (tmp_path / "src/medimg/models/zoo" / f"{model}.py").write_text(module)
    # step 2: the run, appended to runs: (one epoch here, to keep the test short)
    params = (REPO / "params.yaml").read_text()
    indented = entry.rstrip() + "\n    epochs: 1\n"
    params = params.replace("\nruns:\n", "\nruns:\n" + indented, 1)
    (tmp_path / "params.yaml").write_text(params)

    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path / "src"),  # the scratch package, not the installed one
        "MEDIMG_ROOT": str(tmp_path),
    }
    env.pop("MLFLOW_TRACKING_URI", None)

    def stage(script: str, *args: str) -> None:
        result = subprocess.run(
            [sys.executable, f"stages/{script}.py", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=600,
        )
        assert result.returncode == 0, f"{script}: {result.stderr[-3000:]}"

    stage("fetch", "--dataset", "chest_xray")
    stage("split", "--dataset", "chest_xray")
    stage("augment", "--dataset", "chest_xray")
    stage("train", "--run", run_name)

    summary = json.loads((tmp_path / "models" / run_name / "summary.json").read_text())
    assert summary["model"] == model
    assert [seed["epochs_run"] for seed in summary["seeds"]] == [1]
    assert (tmp_path / "models" / run_name / "seed-0" / "model.keras").is_file()
