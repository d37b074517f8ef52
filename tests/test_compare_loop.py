"""The everyday loop: run, commit, change one setting, run again, compare with main.

In a scratch git repository made of the repository's files (branch main): one
configuration's pipeline (fetch, split, augment, train and evaluate of mri_cnn_thesis,
the sample's smallest) is run and committed, with what .gitignore lets git hold of its
outputs; then `dvc exp run` changes one parameter (two repeats instead of one). DVC
must then compare the workspace and the experiment with the commit: `dvc metrics diff
main` with the old and the new values, `dvc params diff main`, `dvc exp show --json`
with the experiment's metrics; `medimg summary --base main` puts them in Markdown. A
fresh clone's lock check (tests/test_dvc_status.py) flags a commit that edits a
stage's dep without re-running it. MLflow: the experiment is of the "machine
learning" kind and the parent run holds the headline only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_dvc_status import changed_deps
from test_pipeline_e2e import _copy_repository, pipeline_env

pytestmark = pytest.mark.e2e

RUN = "mri_cnn_thesis"
DATASET = "brain_tumor_mri"
TARGET = f"evaluate@{RUN}"
METRICS = f"reports/runs/{RUN}/metrics.json"
# `++`: the run has no `repeats` of its own (run_defaults gives it 1)
CHANGE = f"++runs.{RUN}.repeats=2"
EXPERIMENT = "two-repeats"
DVC = [sys.executable, "-m", "dvc"]


def run(cmd: list[str], repo: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{(result.stdout + result.stderr)[-6000:]}"
    )
    return result.stdout


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=medimg tests", "-c", "user.email=tests@medimg.invalid"]
    return run(["git", *identity, *args], repo, dict(os.environ))


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = tmp_path_factory.mktemp("loop")
    _copy_repository(repo)
    # main commits its own run's reports; without them, the commit below shows what git
    # takes of a run's outputs
    shutil.rmtree(repo / "reports")
    env = {**pipeline_env(), "DVC_NO_ANALYTICS": "1"}
    git(repo, "symbolic-ref", "HEAD", "refs/heads/main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the code")
    run([*DVC, "repro", TARGET], repo, env)
    git(repo, "add", "-A")
    committed = set(git(repo, "diff", "--cached", "--name-only").split())
    git(repo, "commit", "-q", "-m", f"dvc repro {TARGET}")
    run([*DVC, "exp", "run", "-n", EXPERIMENT, "-S", CHANGE, TARGET], repo, env)
    return {"repo": repo, "env": env, "committed": committed}


def test_the_commit_holds_the_lock_metrics_and_plot_data_not_the_figures(loop: dict) -> None:
    reports = {path for path in loop["committed"] if path.startswith("reports/")}
    folder = f"reports/runs/{RUN}"
    assert reports == {
        f"{folder}/{name}"
        for name in (
            "metrics.json",
            "details.json",
            "confusion_test.csv",
            "roc_test.csv",
            "pr_test.csv",
        )
    }
    assert "dvc.lock" in loop["committed"]
    # every cached output was git-ignored already: DVC wrote no .gitignore of its own
    assert not [path for path in loop["committed"] if path.endswith(".gitignore")]


def test_dvc_metrics_diff_shows_the_old_and_the_new_values(loop: dict) -> None:
    diff = json.loads(run([*DVC, "metrics", "diff", "main", "--json"], loop["repo"], loop["env"]))
    seeds = diff[METRICS]["seeds"]
    assert (seeds["old"], seeds["new"]) == (1, 2)
    # with one repeat the std is undefined (null); with two it is a number
    assert diff[METRICS]["acc_std"]["old"] is None
    assert isinstance(diff[METRICS]["acc_std"]["new"], float)


def test_dvc_params_diff_shows_the_changed_setting(loop: dict) -> None:
    diff = json.loads(run([*DVC, "params", "diff", "main", "--json"], loop["repo"], loop["env"]))
    assert diff["params.yaml"] == {f"runs.{RUN}.repeats": {"old": None, "new": 2}}


def test_dvc_exp_show_lists_the_experiment_and_main_with_their_metrics(loop: dict) -> None:
    shown = json.loads(run([*DVC, "exp", "show", "--json"], loop["repo"], loop["env"]))
    baseline = next(row for row in shown if row["rev"] != "workspace")
    assert baseline["name"] == "main"
    assert baseline["error"] is None
    assert baseline["data"]["metrics"][METRICS]["data"]["seeds"] == 1
    experiments = [rev for exp in baseline["experiments"] for rev in exp["revs"]]
    experiment = next(rev for rev in experiments if rev["name"] == EXPERIMENT)
    assert experiment["error"] is None
    assert experiment["data"]["metrics"][METRICS]["data"]["seeds"] == 2
    assert experiment["data"]["params"]["params.yaml"]["data"]["runs"][RUN]["repeats"] == 2


def test_medimg_summary_puts_the_changes_and_the_headline_in_markdown(loop: dict) -> None:
    medimg = [sys.executable, "-m", "medimg.cli"]
    run([*medimg, "report"], loop["repo"], loop["env"])
    summary = run([*medimg, "summary", "--base", "main"], loop["repo"], loop["env"])
    lines = summary.splitlines()
    param_rows = [line for line in lines if line.startswith("| params.yaml")]
    assert param_rows and f"runs.{RUN}.repeats" in param_rows[0]
    seed_rows = [line for line in lines if line.startswith(f"| {METRICS}") and "| seeds " in line]
    assert [cell.strip() for cell in seed_rows[0].strip("|").split("|")] == [
        METRICS,
        "seeds",
        "1",
        "2",
        "1",
    ]
    assert any(line.startswith("#### ") and "the thesis and ours" in line for line in lines)
    # our row in the thesis table, linked to its MLflow run, with the two repeats
    assert any(line.startswith(f"| [{RUN}") and "| 2 |" in line for line in lines)


def test_a_commit_that_edits_a_dep_without_re_running_is_caught(loop: dict, tmp_path: Path) -> None:
    """The stale-lock check (tests/test_dvc_status.py) on a fresh clone, as in CI."""
    clone = tmp_path / "clone"
    git(loop["repo"], "clone", "-q", str(loop["repo"]), str(clone))
    ran = {f"fetch@{DATASET}", f"split@{DATASET}", f"augment@{DATASET}", f"train@{RUN}", TARGET}
    assert not set(changed_deps(clone)) & ran  # the lock committed with the run matches
    with (clone / "src" / "medimg" / "data" / "split.py").open("a") as file:
        file.write("\n# an edit, committed without dvc repro\n")
    git(clone, "commit", "-q", "-am", "edit the split's code only")
    stale = changed_deps(clone)
    assert stale.get(f"split@{DATASET}") == {"src/medimg/data/split.py"}
    assert not set(stale) & (ran - {f"split@{DATASET}"})


def test_mlflow_experiment_kind_and_a_bounded_parent_run(loop: dict) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{loop['repo'] / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"medimg-{DATASET}")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parents = client.search_runs(
        [experiment.experiment_id], "tags.`medimg.role` = 'parent'", max_results=10
    )
    assert len(parents) == 2  # the commit's run, the experiment's
    for parent in parents:
        metrics = parent.data.metrics
        assert "test_accuracy_mean" in metrics and "test_roc_auc_mean" in metrics
        # the headline (evaluation.parent_metrics) and the training's means, not the
        # few hundred statistics of every metric that details.json holds
        assert len(metrics) <= 30, sorted(metrics)
    two = next(p for p in parents if p.data.params.get("run.repeats") == "2")
    assert {"test_accuracy_ci_low", "test_accuracy_ci_high"} <= set(two.data.metrics)
