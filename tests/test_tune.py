"""Optuna studies (`medimg tune`) on tiny prepared arrays, with a real journal storage,
a real sqlite MLflow store, real worker processes and a real SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from medimg.config.base import ParamsError
from medimg.config.params import parse_params
from medimg.config.studies import run_with_values
from medimg.data.prepared import load_prepared
from medimg.tracking import store
from medimg.tuning.storage import (
    HEARTBEAT_INTERVAL_S,
    STORAGE_ENV,
    TuneStorageError,
    default_journal,
    describe,
    open_storage,
)
from medimg.tuning.study import storage_study_name, study_definition
from medimg.tuning.tune_stage import reports_dir, run_tune
from tiny_data import tiny_datasets, write_tiny_prepared

pytestmark = pytest.mark.slow  # each test trains, or runs a server

SIZE = 32
STUDY = "tiny_lr"


def _write_prepared(root: Path) -> None:
    write_tiny_prepared(root)


def _raw(study: dict | None = None, epochs: int = 3) -> dict:
    """params.yaml content: one tiny run, one study over it (`study` overrides its keys)."""
    run = {
        "dataset": "chest_xray",
        "split_protocol": "official",
        "model": "xray_cnn",
        "model_options": {"feature_maps": 4, "conv_blocks": 2, "dense_units": [8]},
        "epochs": epochs,
        "batch_size": 8,
        "run_eagerly": True,  # tiny trainings: tracing costs more than it saves
        "repeats": 2,
    }
    base_study = {
        "run": "tiny",
        "n_trials": 2,
        "pruner": {"name": "none"},
        "sampler": {"name": "tpe", "seed": 0},
        "space": {
            "learning_rate": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
            "image_size": {"choices": [16, 32]},
        },
    }
    return {
        "profile": "sample",
        "datasets": tiny_datasets(SIZE),
        "runs": {"tiny": run},
        "tune": {STUDY: {**base_study, **(study or {})}},
    }


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the project's default store
    monkeypatch.delenv("MEDIMG_OPTUNA_STORAGE", raising=False)  # the default journal file
    _write_prepared(tmp_path)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


def _storage_name(root: Path, raw: dict) -> str:
    """The study's name in the storage, as a worker of `raw` names it."""
    params = parse_params(raw)
    data = load_prepared(root / "data" / "prepared" / "chest_xray" / "official")
    return storage_study_name(
        STUDY, study_definition(params.tune[STUDY], params.runs["tiny"], data)
    )


def _load_study(root: Path, raw: dict) -> optuna.Study:
    """The study of `raw` in the default journal of `root`."""
    storage = open_storage(str(default_journal()))
    return optuna.load_study(study_name=_storage_name(root, raw), storage=storage)


def _mlflow_runs(root: Path, role: str) -> list:
    client = MlflowClient(store.tracking_uri())
    experiment = client.get_experiment_by_name("medimg-chest_xray")
    return client.search_runs([experiment.experiment_id], f"tags.`medimg.role` = '{role}'")


def _trial_runs_by_number(root: Path) -> dict[int, object]:
    return {int(r.data.tags["medimg.trial_number"]): r for r in _mlflow_runs(root, "trial")}


def test_study_tracks_trials_writes_best_params_and_resumes(root: Path) -> None:
    raw = _raw()
    params = parse_params(raw)

    first = run_tune(params.study_settings(STUDY))

    study = _load_study(root, raw)
    assert [t.number for t in study.trials] == [0, 1]
    assert study.metric_names == ["val_roc_auc"]  # the dashboard's name, not "Objective 0"
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    (parent,) = _mlflow_runs(root, "study")
    assert parent.info.run_id == first["parent_run_id"]
    assert parent.data.tags["medimg.study"] == STUDY
    assert parent.data.tags["medimg.run"] == "tiny"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    children = _trial_runs_by_number(root)
    assert sorted(children) == [0, 1]
    for number, child in children.items():
        trial = study.trials[number]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["medimg.trial_state"] == "COMPLETE"
        assert child.info.status == "FINISHED"
        assert child.data.metrics["val_roc_auc"] == pytest.approx(trial.value)
        assert float(child.data.params["learning_rate"]) == pytest.approx(
            trial.params["learning_rate"]
        )
        history = MlflowClient(store.tracking_uri()).get_metric_history(
            child.info.run_id, "epoch_val_auc"
        )
        assert [m.step for m in history] == [1, 2, 3]
    # each trial's work folder is gone once the trial ended
    assert not list((root / ".medimg-work" / "tune").glob("*/trial-*"))

    record = yaml.safe_load((reports_dir(STUDY) / "best_params.yaml").read_text())
    best = study.best_trial
    assert record["value"] == pytest.approx(best.value)
    assert record["trial_number"] == best.number
    assert record["storage"] == str(default_journal())
    assert record["params"] == {f"runs.tiny.{k}": v for k, v in best.params.items()}
    assert (reports_dir(STUDY) / "figures" / "optimization_history.png").stat().st_size > 0
    assert (reports_dir(STUDY) / "figures" / "param_importances.png").stat().st_size > 0

    # The printed command, applied by DVC's own override code, gives the best trial's run.
    from dvc.utils.hydra import apply_overrides

    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    overrides = [arg for arg in record["command"].split() if "=" in arg]
    apply_overrides(params_file, overrides)
    applied = parse_params(yaml.safe_load(params_file.read_text())).runs["tiny"]
    assert applied.repeats == 5
    expected = run_with_values(params.runs["tiny"], best.params)
    assert applied.model_copy(update={"repeats": 2}).options() == expected.options()
    assert applied.learning_rate == expected.learning_rate
    assert applied.image_size == expected.image_size

    # A second call with a larger target adds a trial to the same study and parent.
    started = [t.datetime_start for t in study.trials]
    second = run_tune(params.study_settings(STUDY), n_trials=3)
    study = _load_study(root, raw)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert [t.datetime_start for t in study.trials[:2]] == started
    assert second["parent_run_id"] == first["parent_run_id"]
    assert len(_mlflow_runs(root, "study")) == 1
    assert sorted(_trial_runs_by_number(root)) == [0, 1, 2]


def test_pruned_trial_is_pruned_in_optuna_and_mlflow(root: Path) -> None:
    # Same seed, so the same initial weights: a trial that barely moves them (lr 1e-7)
    # keeps the initial val loss while the first one lowers it, and the median prunes it.
    raw = _raw(
        {
            "objective": "log_loss",
            "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 1},
            "space": {"learning_rate": {"choices": [0.01, 1.0e-7]}},
        },
        epochs=4,
    )
    study = optuna.create_study(
        storage=open_storage(str(default_journal())),
        study_name=_storage_name(root, raw),
        direction="minimize",
    )
    study.enqueue_trial({"learning_rate": 0.01})
    study.enqueue_trial({"learning_rate": 1.0e-7})

    run_tune(parse_params(raw).study_settings(STUDY), n_trials=2)

    study = _load_study(root, raw)
    first, second = study.trials
    assert first.state == TrialState.COMPLETE
    assert second.state == TrialState.PRUNED
    assert (first.params, second.params) == ({"learning_rate": 0.01}, {"learning_rate": 1.0e-7})
    assert second.user_attrs["epochs_trained"] < 4
    child = _trial_runs_by_number(root)[1]
    assert child.data.tags["medimg.trial_state"] == "PRUNED"
    assert child.info.status == "KILLED"
    summary = json.loads((reports_dir(STUDY) / "summary.json").read_text())
    assert (summary["complete"], summary["pruned"]) == (1, 1)


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"learnin_rate": {"low": 0.1, "high": 1}}, "tune.tiny_lr.space.learnin_rate: runs.tiny"),
        ({"learning_rate": {"low": 0.1, "high": 0.01}}, "low = 0.1 is above high = 0.01"),
        ({"learning_rate": {"low": 0, "high": 0.1, "log": True}}, "log: true needs low > 0"),
        ({"model_options.dropout": {"low": 0, "high": 1.5}}, "high 1.5 is not a valid"),
        ({"model_options.dropot": {"low": 0, "high": 0.5}}, "has no key 'model_options.dropot'"),
        ({"batch_size": {"choices": [8, 0]}}, "tune.tiny_lr.space.batch_size: choice 0"),
        (
            {"image_size": {"choices": [16, 64]}},
            "choice 64: runs.tiny.image_size = 64 is above the prepared size 32",
        ),
        ({"epochs": {"low": 1, "high": 4}}, "tune.tiny_lr.space.epochs: epochs cannot be"),
        ({"batch_size": {"choices": [[8], [16]]}}, "choices must be numbers, strings or"),
        ({"batch_size": {"low": 8, "high": 32, "step": 5}}, "step = 5 does not divide"),
        ({"learning_rate": {"low": 0.001}}, "needs `choices: [...]` or both `low` and `high`"),
    ],
)
def test_bad_search_space_fails_naming_study_and_key(space: dict, expected: str) -> None:
    with pytest.raises(ParamsError) as err:
        parse_params(_raw({"space": space}))
    assert expected in str(err.value)
    assert f"tune.{STUDY}.space.{next(iter(space))}" in str(err.value)


@pytest.mark.parametrize(
    ("study", "expected"),
    [
        ({"run": "nope"}, "tune.tiny_lr.run = 'nope' is not a configured run; allowed: ['tiny']"),
        ({"direction": "minimize"}, "direction = 'minimize' contradicts objective 'roc_auc'"),
        ({"sampler": {"name": "cmaes"}}, "tune.tiny_lr.sampler"),
    ],
)
def test_bad_study_entries_name_the_study(study: dict, expected: str) -> None:
    with pytest.raises(ParamsError) as err:
        parse_params(_raw(study))
    assert expected in str(err.value)


def _worker(root: Path, params_file: Path, *extra: str) -> subprocess.Popen:
    """`medimg tune` in its own process, as a second terminal would start it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MEDIMG_"))}
    env["MEDIMG_ROOT"] = str(root)
    command = [sys.executable, "-m", "medimg.cli", "--params", str(params_file), "tune"]
    return subprocess.Popen(
        [*command, "--study", STUDY, *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_worker_processes_share_one_study(root: Path) -> None:
    raw = _raw({"n_trials": 4}, epochs=2)
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))

    workers = [_worker(root, params_file) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]

    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]
    study = _load_study(root, raw)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    claims = {t.user_attrs["medimg.worker"]["worker"] for t in study.trials}
    assert 1 <= len(claims) <= 2
    (parent,) = _mlflow_runs(root, "study")  # two workers, one study run
    children = _trial_runs_by_number(root)
    assert sorted(children) == [0, 1, 2, 3]
    assert {c.data.tags["mlflow.parentRunId"] for c in children.values()} == {parent.info.run_id}


def test_killed_worker_trial_is_failed_and_retried(root: Path) -> None:
    raw = _raw({"n_trials": 2}, epochs=8)
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    worker = _worker(root, params_file)
    # Kill it once trial 0 has finished an epoch (its history has a row).
    deadline = time.monotonic() + 240
    while not any(
        len(p.read_text().splitlines()) > 1
        for p in (root / ".medimg-work" / "tune").glob("*/trial-0/seed-0/history.csv")
    ):
        assert worker.poll() is None, worker.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "trial 0 did not start training in time"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    killed = _load_study(root, raw).trials[0]
    assert killed.state == TrialState.RUNNING

    summary = run_tune(parse_params(raw).study_settings(STUDY))

    study = _load_study(root, raw)
    states = {t.number: t.state for t in study.trials}
    assert states[0] == TrialState.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == killed.params
    assert summary["counts"]["complete"] == 2
    child = _trial_runs_by_number(root)[0]
    assert child.data.tags["medimg.trial_state"] == "FAIL"
    assert child.info.status == "FAILED"
    assert not list((root / ".medimg-work" / "tune").glob("*/trial-0"))
    assert not list((root / ".medimg-work" / "tune").glob("*/workers/*.lock"))


def test_unusable_storage_fails_before_any_trial(root: Path) -> None:
    missing = root / "no-such-folder" / "journal.log"
    with pytest.raises(TuneStorageError, match=f"Optuna storage {missing}: the folder"):
        run_tune(parse_params(_raw()).study_settings(STUDY), storage=str(missing))
    assert not (root / "mlruns" / "mlflow.db").exists()


@pytest.mark.cluster
def test_study_in_the_team_postgresql_storage(
    root: Path, cluster_stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STORAGE_ENV, cluster_stack.optuna_storage)

    summary = run_tune(parse_params(_raw({"n_trials": 1})).study_settings(STUDY))

    storage = open_storage(cluster_stack.optuna_storage)
    assert isinstance(storage, RDBStorage)  # with the heartbeat that re-queues dead workers'
    assert storage.heartbeat_interval == HEARTBEAT_INTERVAL_S
    study = optuna.load_study(study_name=summary["storage_study"], storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    assert summary["storage"] == describe(cluster_stack.optuna_storage)
    record = yaml.safe_load((reports_dir(STUDY) / "best_params.yaml").read_text())
    assert record["storage"] == summary["storage"]
