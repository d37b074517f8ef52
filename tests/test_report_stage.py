"""The DVC stage `report`: it comes after every evaluate stage, its script calls the CLI.

The report depends on the folder reports/runs/, which holds every evaluate stage's
outputs, so DVC orders it after all of them and a new run needs no line in dvc.yaml;
checked here with DVC's own graph (`dvc dag`).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from medimg.config.params import load_params
from medimg.reporting.report import COMPARISONS_FILE, REPORT_FILES
from medimg.reporting.thesis import THESIS_RESULTS_FILE

REPO = Path(__file__).resolve().parents[1]


def _report_stage() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["report"]


def test_dvc_orders_the_report_after_every_runs_evaluation() -> None:
    runs = load_params(REPO / "params.yaml").runs
    deps = _report_stage()["deps"]
    assert "reports/runs" in deps
    thesis_file = f"src/medimg/reporting/{THESIS_RESULTS_FILE.name}"
    assert "src/medimg/reporting" in deps and (REPO / thesis_file).is_file()
    dag = subprocess.run(
        [sys.executable, "-m", "dvc", "dag", "--dot", "report"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout
    before_report = set(re.findall(r'"([^"]+)" -> "report"', dag))
    assert {f"evaluate@{run}" for run in runs} <= before_report, dag


def test_report_stage_outputs_are_the_report_files() -> None:
    stage = _report_stage()
    assert stage["cmd"] == "python stages/report.py"
    outs = {
        name: options
        for out in stage["outs"]
        for name, options in (out.items() if isinstance(out, dict) else [(out, {})])
    }
    # every file write_report writes; the text ones committed (cache: false: what `dvc
    # diff` and a pull request show), report.html (figures inlined) in DVC's cache
    assert set(outs) == {f"reports/{name}" for name in (*REPORT_FILES, COMPARISONS_FILE)}
    committed = {name for name, options in outs.items() if options.get("cache") is False}
    assert committed == {"reports/report.md", f"reports/{COMPARISONS_FILE}"}


def test_stage_script_calls_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / "report.py"), "--help"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: medimg report" in result.stdout
