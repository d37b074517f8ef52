"""What git holds of the pipeline's outputs: exactly those dvc.yaml keeps out of DVC's cache.

An output declared `cache: false` (metrics, plot data, the report's Markdown) is meant
to be committed (FACTS.md: DVC 3.67): `dvc metrics diff <rev>`, `dvc plots diff <rev>`
and `dvc exp show` read it from a commit, and find nothing to compare when git ignores
it. A cached output (figures, report.html, models, data) must be ignored, or git would
hold it twice and DVC would add .gitignore files of its own beside it. Checked on every
stage and foreach item DVC resolves from dvc.yaml, against the repository's .gitignore.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from dvc.repo import Repo

REPO = Path(__file__).resolve().parents[1]


def dvc_outputs() -> dict[str, bool]:
    """{output path relative to the repository: cached in DVC}, of every resolved stage."""
    with Repo(str(REPO)) as repo:
        return {
            Path(out.fs_path).relative_to(REPO).as_posix(): out.use_cache
            for stage in repo.index.stages
            for out in stage.outs
        }


def git_ignored(paths: list[str]) -> set[str]:
    """The paths .gitignore excludes, whether or not they exist or are tracked."""
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin", "-z"],
        cwd=REPO,
        input="\0".join(paths) + "\0",
        capture_output=True,
        text=True,
    )
    assert result.returncode in (0, 1), result.stderr  # 1: none of them is ignored
    return set(filter(None, result.stdout.split("\0")))


def test_git_commits_the_uncached_outputs_and_ignores_the_cached_ones() -> None:
    outputs = dvc_outputs()
    assert any(path.endswith("/metrics.json") for path in outputs)  # the stages resolved
    ignored = git_ignored(sorted(outputs))
    hidden = sorted(path for path, cached in outputs.items() if not cached and path in ignored)
    assert not hidden, (
        "declared `cache: false` in dvc.yaml (to be committed) but git-ignored, so no "
        f"commit can hold them: {hidden}"
    )
    doubled = sorted(path for path, cached in outputs.items() if cached and path not in ignored)
    assert not doubled, f"cached by DVC but not git-ignored (.gitignore): {doubled}"


def test_files_inside_a_cached_folder_or_a_folder_being_built_are_ignored() -> None:
    inside = [
        "reports/runs/xray_cnn/seeds/seed-0/metrics.json",  # seeds/: one cached output
        "reports/runs/.xray_cnn.staging-0123456789ab/metrics.json",  # medimg.atomic's
        "reports/tune/.xray_cnn_search.staging-0123456789ab/trials.csv",
    ]
    assert git_ignored(inside) == set(inside)


def test_the_reports_git_tracks_are_uncached_outputs() -> None:
    """Whatever is committed under reports/ is a `cache: false` output (no stray PNG)."""
    tracked = subprocess.run(
        ["git", "ls-files", "reports"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    uncached = {path for path, cached in dvc_outputs().items() if not cached}
    assert not [path for path in tracked if path not in uncached]
