"""MLflow for a study: one study run (the parent), one child run per trial.

The study run is found by its tags (role, storage study name, storage) and created
once. Local workers create it under the study lock, so two that start together
cannot both create one. Workers on other hosts (a shared PostgreSQL and MLflow
server) do not share that lock: each re-reads the study runs right after creating
its own and keeps the earliest (start time, then run id), deleting its own if it is
not that one. A worker that created a run after another's search had finished sees
the other's earlier run, so all workers settle on one parent before any trial is
logged, given clocks in step to a few milliseconds.

A trial's child run holds its sampled parameters (as the run's ordinary params),
its per-epoch curves (MlflowEpochLogger; one nested run per seed when a trial trains
several), its value, and its final state as the tag medimg.trial_state and as the
run status: COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import FrozenTrial, TrialState

from medimg.config.runs import RunConfig
from medimg.tracking import batch, runs, store
from medimg.training import mlflow_logger
from medimg.tuning.workers import waiting_lock

STUDY_ROLE = "study"
TRIAL_ROLE = "trial"
TRIAL_STATE_TAG = "medimg.trial_state"
# Trial user attribute {"trial": number, "run_id": ...}: the child run of a trial. The
# number tells a re-queued trial's inherited attribute from its own.
RUN_ATTR = "medimg.mlflow_run"
RUN_STATUS = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "KILLED",
    TrialState.FAIL: "FAILED",
}


class StudyTracker:
    """The study's parent run and the logging of its trials' child runs."""

    def __init__(
        self, client: MlflowClient, experiment_id: str, parent_run_id: str, tags: dict[str, str]
    ) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.tags = tags

    @classmethod
    def open(
        cls,
        tracking_uri: str,
        experiment_name: str,
        tags: dict[str, str],
        params: Mapping[str, Any],
        study_dir: Path,
    ) -> StudyTracker:
        """Find the study run by its tags, or create it (with `params`); mark it RUNNING.

        Under the study lock, which also keeps two workers from initialising a new
        sqlite store (MlflowClient creates its tables) or experiment at the same moment.
        """
        with waiting_lock(study_dir / "study.lock", "the study's MLflow run"):
            client = MlflowClient(tracking_uri)
            experiment_id = store.get_or_create_experiment(client, experiment_name)
            parent = _find_or_create_parent(client, experiment_id, tags, params)
        client.update_run(parent, status="RUNNING")
        return cls(client, experiment_id, parent, tags)

    def start_trial(self, trial: optuna.Trial, values: dict[str, Any], run: RunConfig) -> str:
        """Create the trial's child run with its parameters; record its id on the trial."""
        tags = {
            **self.tags,
            **runs.process_tags(),
            "medimg.role": TRIAL_ROLE,
            "medimg.trial_number": str(trial.number),
            TRIAL_STATE_TAG: TrialState.RUNNING.name,
            MLFLOW_PARENT_RUN_ID: self.parent_run_id,
        }
        name = f"{self.tags['medimg.study']}/trial-{trial.number}"
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        trial.set_user_attr(RUN_ATTR, {"trial": trial.number, "run_id": run_id})
        flat = runs.flatten_params(
            {**run.model_dump(mode="json"), "model_options": run.options().model_dump(mode="json")}
        )
        batch.log_batch(self.client, run_id, params=batch.params_of(flat))
        self.client.set_tag(
            run_id, "medimg.sampled", ", ".join(f"{k}={v}" for k, v in values.items())
        )
        return run_id

    def epoch_logger(
        self, trial_run_id: str, trial_number: int, seed: int, repeats: int
    ) -> mlflow_logger.MlflowEpochLogger:
        """Per-epoch curves of one seed: on the trial run, or a nested run per seed."""
        if repeats == 1:
            return mlflow_logger.MlflowEpochLogger(trial_run_id, self.client.tracking_uri)
        tags = {
            **self.tags,
            **runs.process_tags(),
            "medimg.role": "trial_seed",
            "medimg.trial_number": str(trial_number),
            "medimg.seed": str(seed),
            MLFLOW_PARENT_RUN_ID: trial_run_id,
        }
        name = f"{self.tags['medimg.study']}/trial-{trial_number}/seed-{seed}"
        seed_run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return mlflow_logger.MlflowEpochLogger(seed_run.info.run_id, self.client.tracking_uri)

    def finish_seed_run(
        self, logger: mlflow_logger.MlflowEpochLogger, trial_run_id: str, status: str
    ) -> None:
        if logger.run_id != trial_run_id:
            self.client.set_terminated(logger.run_id, status=status)

    def finish_trial(self, trial: FrozenTrial, objective: str, error: str | None = None) -> None:
        """Log the trial's outcome on its child run and end the run with its state."""
        attr = trial.user_attrs.get(RUN_ATTR)
        if not isinstance(attr, dict) or attr.get("trial") != trial.number:
            return  # the trial ended before its child run existed
        run_id = attr["run_id"]
        metrics = {"trial_number": trial.number}
        # The objective's numeric attributes: epochs_trained, train_seconds.
        metrics.update(
            (key, value)
            for key, value in trial.user_attrs.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        )
        if trial.state == TrialState.COMPLETE:
            metrics[f"val_{objective}"] = trial.value
        if trial.intermediate_values:
            metrics["last_reported_step"] = max(trial.intermediate_values)
        batch.log_batch(self.client, run_id, metrics=batch.metrics_at(metrics))
        self.client.set_tag(run_id, TRIAL_STATE_TAG, trial.state.name)
        if error:
            self.client.set_tag(run_id, "medimg.error", error[: runs.MAX_PARAM_VALUE_LENGTH])
        self.client.set_terminated(run_id, status=RUN_STATUS.get(trial.state, "FAILED"))

    def log_study_summary(
        self, metrics: dict[str, float], tags: dict[str, str], artifacts: Path
    ) -> None:
        """The best value and parameters, counts and the report files on the study run."""
        batch.log_batch(self.client, self.parent_run_id, metrics=batch.metrics_at(metrics))
        for key, value in tags.items():
            self.client.set_tag(self.parent_run_id, key, value)
        self.client.log_artifacts(self.parent_run_id, str(artifacts), artifact_path="study")

    def close(self) -> None:
        self.client.set_terminated(self.parent_run_id, status="FINISHED")


def _study_runs(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> list[Run]:
    keys = ("medimg.role", "medimg.optuna_study", "medimg.optuna_storage")
    query = " and ".join(f"tags.`{key}` = '{tags[key]}'" for key in keys)
    runs = client.search_runs([experiment_id], query, max_results=100)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def _find_or_create_parent(
    client: MlflowClient, experiment_id: str, tags: dict[str, str], params: Mapping[str, Any]
) -> str:
    existing = _study_runs(client, experiment_id, tags)
    if existing:
        return existing[0].info.run_id
    mine = client.create_run(experiment_id, run_name=tags["medimg.study"], tags=tags).info.run_id
    chosen = _study_runs(client, experiment_id, tags)[0].info.run_id
    if chosen != mine:
        client.delete_run(mine)  # another host's worker created one first
        return chosen
    batch.log_batch(client, mine, params=batch.params_of(runs.flatten_params(params)))
    return mine
