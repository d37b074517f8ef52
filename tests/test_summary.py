"""`medimg summary`'s parts: the report's headline tables, and one-line errors.

The whole summary, with DVC's diffs of a real experiment, is checked in
tests/test_compare_loop.py (it needs a pipeline run).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medimg.reporting.render import Report, Section, to_markdown
from medimg.reporting.summary import SummaryError, dvc_diff, headline_tables, pipeline_summary
from medimg.reporting.tables import THESIS_TABLE_CAPTION, Cell, Row, Table


def table(caption: str, value: str) -> Table:
    return Table(
        caption=caption, columns=("run", "test accuracy"), rows=(Row((Cell("a"), Cell(value))),)
    )


def report_markdown() -> str:
    """A report as render.to_markdown writes it: thesis tables among others, per dataset."""
    sections = tuple(
        Section(
            title=dataset,
            tables=(
                table(f"{dataset} thesis{THESIS_TABLE_CAPTION}", f"{dataset} 91 %"),
                table(f"{dataset}: test metrics (mean ± std over the repeats)", "0.9"),
            ),
            notes=("a note",),
        )
        for dataset in ("Chest X-ray", "Brain MRI")
    )
    runs = table("Runs: where and how each configuration was trained", "x")
    return to_markdown(Report("t", "now", "sqlite:///x", (), (), sections, runs))


def test_headline_tables_are_the_thesis_tables_in_order() -> None:
    tables = headline_tables(report_markdown())
    assert [t.splitlines()[0] for t in tables] == [
        "#### Chest X-ray thesis: test accuracy, the thesis and ours",
        "#### Brain MRI thesis: test accuracy, the thesis and ours",
    ]
    assert "| a | Chest X-ray 91 % |" in tables[0]
    assert not any("test metrics" in t or "## " in t.split("\n", 1)[1] for t in tables)


def test_an_unknown_revision_is_one_line_naming_it(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    with pytest.raises(SummaryError, match=r"git revision 'nowhere' not found.*--base"):
        pipeline_summary("nowhere", tmp_path)


def test_a_workspace_without_the_report_asks_for_the_pipeline(tmp_path: Path) -> None:
    identity = ["-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(
        ["git", *identity, "commit", "-q", "--allow-empty", "-m", "c"], cwd=tmp_path, check=True
    )
    with pytest.raises(SummaryError, match=r"report\.md: not found; run the pipeline first"):
        pipeline_summary("HEAD", tmp_path)


@pytest.mark.slow  # runs git and DVC
def test_dvc_diffs_are_tables_of_what_differs_or_nothing(tmp_path: Path) -> None:
    identity = ["-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "params.yaml").write_text("rate: 0.1\nepochs: 2\n")
    (tmp_path / "m.json").write_text('{"acc": 0.5}')
    stage = {"cmd": "true", "params": ["rate", "epochs"], "metrics": [{"m.json": {"cache": False}}]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": stage}}))
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(["git", *identity, "commit", "-q", "-m", "c"], cwd=tmp_path, check=True)
    # nothing differs: no table (DVC alone would print an empty one)
    assert dvc_diff("params", "HEAD", tmp_path) == dvc_diff("metrics", "HEAD", tmp_path) == ""
    (tmp_path / "params.yaml").write_text("rate: 0.2\nepochs: 2\n")
    (tmp_path / "m.json").write_text('{"acc": 0.75}')
    params = dvc_diff("params", "HEAD", tmp_path).splitlines()
    assert [row.split("|")[2].strip() for row in params[2:]] == ["rate"]
    metrics = dvc_diff("metrics", "HEAD", tmp_path).splitlines()
    assert [cell.strip() for cell in metrics[2].strip("|").split("|")] == [
        "m.json",
        "acc",
        "0.5",
        "0.75",
        "0.25",
    ]
