"""The DVC stage `report`: its dependencies follow params.yaml, its script calls the CLI.

DVC cannot glob, so dvc.yaml lists each run's reports/<run>/metrics.json by hand;
this test fails, naming the missing or extra entries, when that list and the runs
of params.yaml differ.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from medimg.config import load_params
from medimg.reporting.report import COMPARISONS_FILE, REPORT_FILES
from medimg.reporting.thesis import THESIS_RESULTS_FILE

REPO = Path(__file__).resolve().parents[1]


def _report_stage() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["report"]


def test_report_stage_depends_on_every_runs_metrics() -> None:
    runs = load_params(REPO / "params.yaml").runs
    deps = _report_stage()["deps"]
    listed = {dep for dep in deps if dep.startswith("reports/")}
    expected = {f"reports/{run}/metrics.json" for run in runs}
    assert listed == expected, (
        f"dvc.yaml stage report: add {sorted(expected - listed)} to its deps, "
        f"remove {sorted(listed - expected)}"
    )
    thesis_file = f"src/medimg/reporting/{THESIS_RESULTS_FILE.name}"
    assert thesis_file in deps and (REPO / thesis_file).is_file()
    assert "src/medimg/reporting" in deps and "stages/report.py" in deps


def test_report_stage_outputs_are_the_report_files() -> None:
    stage = _report_stage()
    assert stage["cmd"] == "python stages/report.py"
    outs = {name: options for out in stage["outs"] for name, options in out.items()}
    # every file write_report writes, each written whole by it (not DVC-cached)
    assert outs == {
        f"reports/{name}": {"cache": False} for name in (*REPORT_FILES, COMPARISONS_FILE)
    }


def test_stage_script_calls_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / "report.py"), "--help"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: medimg report" in result.stdout
