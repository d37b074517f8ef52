"""What a change did, in Markdown: the workspace's pipeline results against a git revision.

For a pull request's CI job summary ($GITHUB_STEP_SUMMARY) and the same locally
(`medimg summary --base main`, `make summary`): after `dvc repro`, the parameters and
metrics that differ from the revision's committed ones (DVC's own `dvc params diff`
and `dvc metrics diff`, as Markdown tables), then the report's headline tables (the
thesis's tables with ours beside them) as reports/report.md holds them now. DVC
compares with a commit only because the metrics are committed (.gitignore).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from medimg.errors import UserError
from medimg.reporting.tables import THESIS_TABLE_CAPTION

REPORT_MARKDOWN = Path("reports") / "report.md"
# As reports/runs/<run>/metrics.json rounds them: more digits would be noise.
METRICS_PRECISION = 4


class SummaryError(UserError, RuntimeError):
    """The summary cannot be made: an unknown revision, no report, DVC failing."""


def _run(command: list[str], root: Path, what: str) -> str:
    result = subprocess.run(
        command,
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    if result.returncode != 0:
        detail = " ".join((result.stderr or result.stdout).split())
        raise SummaryError(f"{what} failed (exit {result.returncode}): {detail}")
    return result.stdout


def resolve_revision(base: str, root: Path) -> str:
    """The short commit id of git revision `base`; a SummaryError naming it if it has none."""
    result = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "--short", f"{base}^{{commit}}"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SummaryError(
            f"git revision {base!r} not found in {root}; fetch it "
            "(e.g. git fetch origin main) or name another with --base"
        )
    return result.stdout.strip()


def dvc_diff(kind: str, base: str, root: Path) -> str:
    """`dvc params|metrics diff <base> --md` (what differs from the revision): a Markdown
    table, or "" when nothing does."""
    command = [sys.executable, "-m", "dvc", kind, "diff", base, "--md"]
    if kind == "metrics":
        command += ["--precision", str(METRICS_PRECISION)]
    table = _run(command, root, f"dvc {kind} diff {base}").strip()
    # DVC prints the header and its rule even when nothing differs
    return table if len(table.splitlines()) > 2 else ""


def headline_tables(report_markdown: str) -> list[str]:
    """The thesis tables of report.md (caption, table and notes), in the report's order."""
    tables: list[str] = []
    blocks = report_markdown.split("\n### ")
    for block in blocks[1:]:
        caption = block.split("\n", 1)[0]
        if caption.endswith(THESIS_TABLE_CAPTION):
            # up to the next section heading, if the block holds one
            body = block.split("\n## ", 1)[0].rstrip()
            tables.append(f"#### {body}")
    return tables


def pipeline_summary(base: str, root: Path) -> str:
    """The Markdown summary of the workspace at `root` against git revision `base`."""
    commit = resolve_revision(base, root)
    report = root / REPORT_MARKDOWN
    if not report.is_file():
        raise SummaryError(f"{report}: not found; run the pipeline first (dvc repro)")
    parts = [f"## medimg: the pipeline's results against `{base}` ({commit})", ""]
    for kind, title in (("params", "Parameters"), ("metrics", "Metrics")):
        table = dvc_diff(kind, base, root)
        parts += [f"### {title} that differ (`dvc {kind} diff {base}`)", ""]
        parts += [table or f"None: every {kind[:-1]} is as in `{base}`.", ""]
    tables = headline_tables(report.read_text())
    parts += [f"### The report's headline tables ({REPORT_MARKDOWN}, this run)", ""]
    parts += [table + "\n" for table in tables] or [f"None: {REPORT_MARKDOWN} holds no table."]
    return "\n".join(parts).rstrip() + "\n"
