"""Scaling out: `medimg tune` workers and `dvc repro` against the team's real servers.

The PostgreSQL cluster and the `mlflow server` are the session's (tests/conftest.py),
on loopback ports. Workers are real `medimg tune` processes; the worker killed in
the heartbeat test runs under another host name (a UTS namespace of its own, as
`unshare --uts` makes it), so that to the other worker it is a machine elsewhere
and only Optuna's RDB heartbeat can tell that it died. Each test writes its own
study (a new sampler seed gives a new study digest) and its own MLflow experiment.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import psycopg
import pytest
import yaml
from mlflow import MlflowClient
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from psycopg import sql

from medimg.team.postgres import ROLE, SUPERUSER_FILE
from medimg.team.stack import Stack
from medimg.tuning.storage import GRACE_ENV, HEARTBEAT_ENV, open_storage

# The tune tests' tiny arrays and study (24 train, 8 val images of 32 px, a 2-block CNN).
from test_pipeline_e2e import _copy_repository
from test_tune import STUDY, _raw, _storage_name, _write_prepared

pytestmark = pytest.mark.cluster

OTHER_HOST = "worker-elsewhere"
WORKER_TIMEOUT_S = 300


def _own_raw(n_trials: int, epochs: int) -> tuple[dict, str]:
    """The tiny study with a fresh sampler seed (a study of its own in the shared database)
    and an MLflow experiment prefix of its own; (params.yaml content, experiment name)."""
    tag = uuid.uuid4().hex[:8]
    raw = _raw({"n_trials": n_trials, "sampler": {"name": "tpe", "seed": int(tag, 16)}}, epochs)
    raw["tracking"] = {"experiment_prefix": f"workers-{tag}"}
    return raw, f"workers-{tag}-chest_xray"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A project root with the tiny prepared arrays (workers get it as MEDIMG_ROOT)."""
    project = tmp_path / "project"
    _write_prepared(project)
    return project


def _fresh_database(stack: Stack) -> str:
    """A new, empty database owned by the workers' role, as `medimg stack start` makes
    `optuna`; its postgresql:// URL."""
    name = f"optuna_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(
        host="127.0.0.1",
        port=stack.pg_port,
        user="postgres",
        password=(stack.folder / SUPERUSER_FILE).read_text(),
        dbname="postgres",
        autocommit=True,
        connect_timeout=5,
    ) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(ROLE)
            )
        )
    return stack.database_url(name)


def test_workers_opening_a_new_database_together_all_get_the_storage(
    cluster_stack: Stack,
) -> None:
    """The first workers on a new database all create Optuna's tables: none may fail."""
    url = _fresh_database(cluster_stack)
    together = threading.Barrier(4)

    def open_at_once(_: int) -> object:
        together.wait()
        return open_storage(url)

    with ThreadPoolExecutor(4) as pool:
        storages = list(pool.map(open_at_once, range(4)))  # re-raises a worker's error
    assert all(isinstance(s, RDBStorage) for s in storages)
    study = optuna.create_study(storage=storages[0], study_name="opened")
    assert [s.get_study_id_from_name("opened") for s in storages] == [study._study_id] * 4


def _worker_env(root: Path, stack: Stack, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MEDIMG_"))}
    env.update(MEDIMG_ROOT=str(root), MLFLOW_TRACKING_URI=stack.tracking_uri, **extra)
    return env


def _start_worker(
    params_file: Path, storage: str, log: Path, env: dict[str, str], host: str = ""
) -> subprocess.Popen:
    """`medimg tune --storage postgresql://...` as a worker process; output to `log`.

    host: run it under that host name, in a UTS namespace of its own (an unprivileged
    user also needs a user namespace for that). The shell execs the worker, so the
    process's pid is the worker's.
    """
    command = [sys.executable, "-m", "medimg.cli", "--params", str(params_file), "tune"]
    command += ["--study", STUDY, "--storage", storage]
    if host:
        namespaces = ["--uts"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--uts"]
        rename = ["sh", "-c", f'hostname {host} && exec "$@"', "sh"]
        command = ["unshare", *namespaces, *rename, *command]
    with log.open("w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def _wait(worker: subprocess.Popen, log: Path) -> None:
    try:
        worker.wait(timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        raise
    assert worker.returncode == 0, _tail(log)


def _load_study(root: Path, raw: dict, storage: str) -> optuna.Study:
    return optuna.load_study(study_name=_storage_name(root, raw), storage=open_storage(storage))


def _study_and_trial_runs(stack: Stack, experiment: str) -> tuple[list, dict[int, object]]:
    """The study runs and {trial number: trial run} of `experiment`, read through the server."""
    client = MlflowClient(stack.tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    studies = [r for r in runs if r.data.tags.get("medimg.role") == "study"]
    trials = {
        int(r.data.tags["medimg.trial_number"]): r
        for r in runs
        if r.data.tags.get("medimg.role") == "trial"
    }
    return studies, trials


def test_three_workers_share_one_study_in_postgresql_and_mlflow(
    cluster_stack: Stack, root: Path, tmp_path: Path
) -> None:
    n_trials, n_workers = 6, 3
    raw, experiment = _own_raw(n_trials, epochs=2)
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    # A new database: the workers also create Optuna's tables together, as on a new stack.
    storage = _fresh_database(cluster_stack)
    env = _worker_env(root, cluster_stack)
    logs = [tmp_path / f"worker-{k}.log" for k in range(n_workers)]
    workers = [_start_worker(params_file, storage, log, env) for log in logs]
    for worker, log in zip(workers, logs, strict=True):
        _wait(worker, log)

    study = _load_study(root, raw, storage)
    numbers = [t.number for t in study.trials]
    # Each number once, none skipped: the storage numbers trials, not the workers.
    assert sorted(numbers) == list(range(len(numbers)))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    # A worker counts the study's trials, then creates one; two workers between those two
    # steps at the last trial can both start one (as with Optuna's own n_trials). Never
    # n_trials each: the total is the study's.
    assert n_trials <= len(numbers) <= n_trials + n_workers - 1
    claims = {t.number: t.user_attrs["medimg.worker"] for t in study.trials}
    pids = {w.pid for w in workers}
    assert {c["pid"] for c in claims.values()} <= pids
    assert len({c["pid"] for c in claims.values()}) >= 2, "one worker ran every trial"

    # MLflow, read through the server: one study run, every trial a child of it, each
    # logged by the worker that ran it.
    studies, trial_runs = _study_and_trial_runs(cluster_stack, experiment)
    assert len(studies) == 1
    parent_id = studies[0].info.run_id
    assert sorted(trial_runs) == sorted(numbers)
    for number, run in trial_runs.items():
        trial = study.trials[numbers.index(number)]
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["medimg.trial_state"] == "COMPLETE"
        assert run.data.tags["medimg.pid"] == str(claims[number]["pid"])
        assert run.data.metrics["val_roc_auc"] == pytest.approx(trial.value)
    assert studies[0].data.metrics["complete"] == len(numbers)
    # nothing went to a local store
    assert not (root / "mlruns").exists()


def _history_rows(root: Path, number: int) -> int:
    rows = [
        len(p.read_text().splitlines())
        for p in (root / ".medimg-work" / "tune").glob(f"*/trial-{number}/seed-0/history.csv")
    ]
    return max(rows, default=0)


def test_worker_killed_on_another_host_is_found_by_the_heartbeat(
    cluster_stack: Stack, root: Path, tmp_path: Path
) -> None:
    """SIGKILL mid-trial; the trial is failed and re-queued by the heartbeat, not the lock."""
    interval, grace = 1, 4
    raw, experiment = _own_raw(n_trials=2, epochs=8)
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    env = _worker_env(root, cluster_stack, **{HEARTBEAT_ENV: str(interval), GRACE_ENV: str(grace)})

    # The worker elsewhere starts trial 0 and dies after its first epoch.
    doomed_log = tmp_path / "doomed.log"
    storage = cluster_stack.optuna_storage
    doomed = _start_worker(params_file, storage, doomed_log, env, host=OTHER_HOST)
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while _history_rows(root, 0) < 2:  # the header and one epoch
        assert doomed.poll() is None, _tail(doomed_log)
        assert time.monotonic() < deadline, "trial 0 did not train an epoch in time"
        time.sleep(0.05)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    killed = _load_study(root, raw, storage).trials[0]
    assert killed.state == TrialState.RUNNING
    assert killed.user_attrs["medimg.worker"]["host"] == OTHER_HOST != socket.gethostname()

    # A worker here: the dead one's lock is not on this host, so only the heartbeat
    # (silent for more than `grace` seconds) can tell that trial 0 lost its worker.
    survivor_log = tmp_path / "survivor.log"
    survivor = _start_worker(params_file, storage, survivor_log, env)
    _wait(survivor, survivor_log)
    said = survivor_log.read_text(errors="replace")
    assert "trial 0: its worker's heartbeat stopped; marked FAIL and re-queued" in said

    study = _load_study(root, raw, storage)
    states = {t.number: t.state for t in study.trials}
    assert states[0] == TrialState.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == killed.params
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 2  # the study's count
    assert all(s in (TrialState.COMPLETE, TrialState.FAIL) for s in states.values())

    studies, trial_runs = _study_and_trial_runs(cluster_stack, experiment)
    assert len(studies) == 1
    assert sorted(trial_runs) == sorted(states)
    dead = trial_runs[0]
    assert dead.data.tags["medimg.host"] == OTHER_HOST
    assert dead.data.tags["medimg.trial_state"] == "FAIL"
    assert dead.info.status == "FAILED"
    assert dead.data.tags["medimg.error"] == "its worker's heartbeat stopped"
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs.values()} == {
        studies[0].info.run_id
    }
    assert trial_runs[retried[0].number].info.status == "FINISHED"
    # the dead trial's work folder is removed by whoever failed it
    assert not list((root / ".medimg-work" / "tune").glob("*/trial-0"))


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output[-6000:]}"
    return output


def test_dvc_repro_logs_to_the_tracking_server(cluster_stack: Stack, tmp_path: Path) -> None:
    """Data stages, one tiny train and evaluate of the sample profile, tracked on the server."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repository(repo)
    tag = uuid.uuid4().hex[:8]
    params_file = repo / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["runs"]["xray_cnn"].update(epochs=1, repeats=1)
    params["tracking"].update(experiment_prefix=f"dvc-{tag}", registered_model_prefix=f"dvc-{tag}")
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MEDIMG_"))}
    # dvc's stage commands call `python`: make it this interpreter, with medimg installed.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = cluster_stack.tracking_uri

    output = _run([sys.executable, "-m", "dvc", "repro", "evaluate@xray_cnn"], repo, env)
    for stage in ("fetch@chest_xray", "split@chest_xray", "augment@chest_xray", "train@xray_cnn"):
        assert f"Running stage '{stage}'" in output

    summary = json.loads((repo / "models" / "xray_cnn" / "summary.json").read_text())
    client = MlflowClient(cluster_stack.tracking_uri)
    experiment = client.get_experiment_by_name(f"dvc-{tag}-chest_xray")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_name: r.info.status for r in runs} == {
        "xray_cnn": "FINISHED",
        "xray_cnn/seed-0": "FINISHED",
    }
    parent = client.get_run(summary["parent_run_id"])
    (seed,) = summary["seeds"]
    child = client.get_run(seed["child_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.data.params["run.epochs"] == "1"
    # train's per-epoch curve and evaluate's test metrics, on the server
    assert [m.step for m in client.get_metric_history(child.info.run_id, "epoch_val_auc")] == [1]
    assert "test_accuracy" in child.data.metrics
    assert "test_accuracy_mean" in parent.data.metrics
    version = client.get_model_version_by_alias(f"dvc-{tag}-chest_xray", "champion")
    assert version.run_id == child.info.run_id
    # and nothing in the copy's own store
    assert not (repo / "mlruns" / "mlflow.db").exists()
    assert [p.name for p in (repo / "mlruns").iterdir()] == [".gitkeep"]
