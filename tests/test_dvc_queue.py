"""DVC's experiment queue on the embedded sample: queued experiments log to the workspace's store.

In a temporary copy of the repository (a git repository with one commit): a workspace
`dvc exp run` trains the baseline (the chest X-ray data stages, then train@xray_cnn and
evaluate@xray_cnn at one epoch and one seed), which is committed. Two experiments that
differ in one setting are queued (a Hydra sweep of `++runs.xray_cnn.learning_rate`) and
run by `dvc queue start -j 2`, side by side, each in DVC's temporary copy under
.dvc/tmp/exps/. Then: both succeed in `dvc exp show --json` with their metrics; their
MLflow runs are in the workspace's store (mlruns/mlflow.db), tagged with the experiment
and its baseline commit, with the evaluate stage's metrics; no store or journal was made
anywhere else; each registered its model without moving the champion (README, "Sweeps");
and once one is chosen (`dvc exp branch`, checked out), `medimg report` finds its runs.
Takes 1.5 to 3.5 minutes on a 2-core CPU (two trainings at once, and DVC's copies).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from test_pipeline_e2e import _copy_repository

pytestmark = pytest.mark.e2e

STAGES = ["train@xray_cnn", "evaluate@xray_cnn"]
EXPERIMENTS = ("lr-1", "lr-2")  # `-n lr` and a sweep of two values
QUEUE_TIMEOUT_S = 900
MODEL = "medimg-chest_xray"
GIT = ["git", "-c", "user.name=medimg-test", "-c", "user.email=test@medimg.invalid"]


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed in {cwd}:\n{output[-6000:]}"
    return output


def _wait_for_queue(dvc: list[str], repo: Path, env: dict[str, str]) -> str:
    """`dvc queue start` returns at once: wait until no experiment is queued or running."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while time.monotonic() < deadline:
        status = _run([*dvc, "queue", "status"], repo, env)
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(5)
    pytest.fail(f"the queue did not finish in {QUEUE_TIMEOUT_S} s:\n{status}")


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = tmp_path_factory.mktemp("queue") / "repo"
    repo.mkdir()
    _copy_repository(repo)
    # A project where nothing ran yet (the committed dvc.lock may be older than the code).
    (repo / "dvc.lock").unlink(missing_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "MEDIMG_", "DVC_")) and k != "MEDIMG_OPTUNA_STORAGE"
    }
    # dvc's stage commands call `python`: make it this interpreter, with medimg installed.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    dvc = [sys.executable, "-m", "dvc"]
    for key, value in (("user.name", "medimg-test"), ("user.email", "test@medimg.invalid")):
        _run(["git", "config", key, value], repo, env)  # DVC commits experiments
    _run(["git", "add", "-A"], repo, env)
    _run([*GIT, "commit", "-qm", "the project"], repo, env)
    tiny = ["-S", "runs.xray_cnn.repeats=1", "-S", "++runs.xray_cnn.epochs=1"]
    _run([*dvc, "exp", "run", *tiny, *STAGES], repo, env)  # the baseline, in the workspace
    _run(["git", "add", "-A"], repo, env)
    _run([*GIT, "commit", "-qm", "baseline: one epoch, one seed"], repo, env)
    baseline = _run(["git", "rev-parse", "HEAD"], repo, env).strip()
    sweep = "++runs.xray_cnn.learning_rate=0.002,0.0005"
    _run([*dvc, "exp", "run", "--queue", "-n", "lr", "-S", sweep, *STAGES], repo, env)
    _run([*dvc, "queue", "start", "-j", "2"], repo, env)
    status = _wait_for_queue(dvc, repo, env)
    shown = json.loads(_run([*dvc, "exp", "show", "--json"], repo, env))
    return {
        "repo": repo,
        "env": env,
        "dvc": dvc,
        "baseline": baseline,
        "status": status,
        "shown": shown,
    }


def _experiments(shown: list[dict]) -> dict[str, dict]:
    """{name: exp show entry} of the experiments of every baseline row."""
    found = {}
    for row in shown:
        for experiment in row.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = {**rev, "executor": experiment.get("executor")}
    return found


def test_both_queued_experiments_succeed_with_their_metrics(swept):
    experiments = _experiments(swept["shown"])
    assert set(EXPERIMENTS) <= set(experiments), swept["status"]
    for name in EXPERIMENTS:
        entry = experiments[name]
        assert entry["executor"]["state"] == "success", (name, swept["status"])
        metrics = entry["data"]["metrics"]["reports/runs/xray_cnn/metrics.json"]
        assert "error" not in metrics, (name, metrics)
        assert 0 <= metrics["data"]["acc"] <= 1 and metrics["data"]["seeds"] == 1
    rates = {
        experiments[name]["data"]["params"]["params.yaml"]["data"]["runs"]["xray_cnn"][
            "learning_rate"
        ]
        for name in EXPERIMENTS
    }
    assert rates == {0.002, 0.0005}


def test_their_runs_are_in_the_workspace_store_tagged_with_the_experiment(swept):
    repo = swept["repo"]
    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(MODEL)
    for name in EXPERIMENTS:
        found = client.search_runs(
            [experiment.experiment_id], f"tags.`medimg.dvc_experiment` = '{name}'"
        )
        roles = sorted(run.data.tags["medimg.role"] for run in found)
        assert roles == ["child", "parent"], (name, roles)
        for run in found:
            assert run.data.tags["medimg.dvc_baseline"] == swept["baseline"]
            assert run.info.status == "FINISHED"
        (child,) = [run for run in found if run.data.tags["medimg.role"] == "child"]
        assert "test_accuracy" in child.data.metrics  # logged by the experiment's evaluate
        artifacts = Path(child.info.artifact_uri.removeprefix("file://"))
        assert artifacts.is_relative_to(repo / "mlruns" / "artifacts")


def test_no_store_or_journal_was_made_outside_the_workspace_stores(swept):
    repo = swept["repo"]
    databases = sorted(str(p.relative_to(repo)) for p in repo.rglob("*.db"))
    assert databases == ["mlruns/mlflow.db"]
    assert not list(repo.rglob("journal.log"))  # no study was run: none anywhere
    leftovers = repo / ".dvc" / "tmp" / "exps"
    assert not [p for p in leftovers.rglob("mlruns") if any(p.iterdir())]


def test_queued_experiments_register_their_models_but_leave_the_champion(swept):
    client = MlflowClient(f"sqlite:///{swept['repo'] / 'mlruns' / 'mlflow.db'}")
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{MODEL}'")}
    assert sorted(map(int, versions)) == [1, 2, 3]
    model = client.get_registered_model(MODEL)
    # Version 1 is the workspace's baseline: still the champion and xray_cnn's best.
    assert str(model.aliases["champion"]) == "1"
    assert str(model.aliases["xray_cnn-best"]) == "1"
    for name in EXPERIMENTS:
        version = versions[str(model.aliases[f"xray_cnn-exp-{name}"])]
        assert version.tags["medimg.dvc_experiment_copy"] == name
    assert "medimg.dvc_experiment_copy" not in versions["1"].tags


def test_a_chosen_experiment_is_what_the_report_shows(swept):
    repo, env, dvc = swept["repo"], swept["env"], swept["dvc"]
    # `dvc exp branch` rather than `dvc exp apply`: apply checks out every stage's outputs
    # and fails on those of the stages this small project never ran.
    _run([*dvc, "exp", "branch", "lr-2", "chosen"], repo, env)
    _run(["git", "checkout", "-q", "chosen"], repo, env)
    _run([*dvc, "checkout", *STAGES], repo, env)
    summary = json.loads((repo / "models" / "xray_cnn" / "summary.json").read_text())
    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["medimg.dvc_experiment"] == "lr-2"
    _run([sys.executable, "-m", "medimg.cli", "report"], repo, env)
    assert summary["parent_run_id"] in (repo / "reports" / "report.md").read_text()
