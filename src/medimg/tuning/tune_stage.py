"""`medimg tune --study NAME` and the DVC stage tune@<study>: run a study's trials, report it.

A call is one worker: it joins the study (creating it, or resuming it where it
stopped), fails and re-queues the trials of dead workers, runs trials until the study
has `n_trials` finished (complete or pruned) trials counting every worker's, or until
its timeout, and writes reports/tune/<study>/. Start it several times, on one machine
(the journal file) or on several (a PostgreSQL storage), to run trials in parallel.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from medimg import paths
from medimg.config.studies import StudyConfig, StudySettings
from medimg.data.prepared import PreparedData, PreparedDataError
from medimg.tracking import runs, store
from medimg.training.train_stage import load_checked_data
from medimg.tuning.objective import EPOCHS_ATTR, TrialObjective
from medimg.tuning.reports import (
    keys_shadowed_by_profile,
    trial_counts,
    write_study_reports,
)
from medimg.tuning.storage import describe, open_storage, storage_url
from medimg.tuning.study import (
    build_sampler,
    check_sampler_available,
    open_study,
    storage_study_name,
    study_definition,
)
from medimg.tuning.trial_tracking import StudyTracker
from medimg.tuning.workers import Worker, fail_trials_of_dead_workers, waiting_lock

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# summary.json keys logged as metrics of the study run
SUMMARY_METRICS = ("best_value", "best_trial", "complete", "pruned", "failed", "epochs_trained")


def reports_dir(study_name: str) -> Path:
    """reports/tune/<study>/: best_params.yaml, summary.json, trials.csv, figures/."""
    return paths.reports_root() / "tune" / study_name


def study_work_dir(storage_name: str, url: str) -> Path:
    """.medimg-work/tune/<storage study>-<storage digest>/: trial folders, worker locks.

    The storage is part of the name: the same study in two storages numbers its
    trials independently, and their trial folders must not meet. Beside the project's
    stores (paths.store_root): the workers of queued DVC experiments, each in its own
    temporary copy, share a study, its lock and its workers' claims.
    """
    digest = hashlib.sha256(describe(url).encode()).hexdigest()[:6]
    return paths.store_root() / ".medimg-work" / "tune" / f"{storage_name}-{digest}"


def _check_image_sizes(study_name: str, study: StudyConfig, data: PreparedData) -> None:
    """The prepared arrays on disk may be older than params.yaml: check them too."""
    dimension = study.space.get("image_size")
    if dimension is None:
        return
    largest = max(v for _, v in dimension.candidates())
    if largest > data.image_size:
        raise PreparedDataError(
            f"tune.{study_name}.space.image_size reaches {largest}, above the size of the "
            f"prepared images in {data.directory} ({data.image_size}); re-run the augment "
            f"stage (dvc repro augment@{data.dataset}) or lower it"
        )


def _study_tags(
    settings: StudySettings, storage_name: str, url: str, data: PreparedData
) -> dict[str, str]:
    study, run = settings.study, settings.run.run
    return {
        **runs.run_tags(study.run, data.meta["source_fingerprint"], run.split_protocol),
        "medimg.role": "study",
        "medimg.study": settings.name,
        "medimg.optuna_study": storage_name,
        "medimg.optuna_storage": describe(url),
        "medimg.profile": settings.profile,
        "medimg.dataset": run.dataset,
        "medimg.model": run.model,
    }


def _trial(study: optuna.Study, number: int) -> FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _trial_line(trial: FrozenTrial) -> str:
    epochs = trial.user_attrs.get(EPOCHS_ATTR, "?")
    value = f" value {trial.value:.4f}" if trial.state == TrialState.COMPLETE else ""
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    return f"trial {trial.number} {trial.state.name}{value} after {epochs} epochs: {shown}"


def _fail_trials_of_dead_workers(
    study: optuna.Study,
    config: StudyConfig,
    tracker: StudyTracker,
    study_dir: Path,
    say: Callable[[str], None],
) -> None:
    """workers.fail_trials_of_dead_workers, closing their MLflow runs and work folders;
    then, on a database storage, Optuna's heartbeat check (dead workers of any host), so that
    their trials stop counting as running (_close_heartbeat_failures closes those)."""

    def close(trial: FrozenTrial) -> None:
        tracker.finish_trial(trial, config.objective, error="its worker died")
        shutil.rmtree(study_dir / f"trial-{trial.number}", ignore_errors=True)

    for number in fail_trials_of_dead_workers(study, study_dir, close):
        say(f"trial {number}: its worker died; marked FAIL and re-queued")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a no-op without a heartbeat


def _close_heartbeat_failures(
    storage: optuna.storages.BaseStorage,
    config: StudyConfig,
    tracker: StudyTracker,
    study_dir: Path,
) -> None:
    """A database storage fails and re-queues a trial whose worker's heartbeat stopped
    (storage.retry_dead_worker_trial); also end its MLflow run FAILED, remove its folder."""
    retry = getattr(storage, "heartbeat_stale_trial_callback", None)
    if not isinstance(storage, RDBStorage) or retry is None:
        return

    def retry_and_close(study: optuna.Study, trial: FrozenTrial) -> None:
        retry(study, trial)
        tracker.finish_trial(trial, config.objective, error="its worker's heartbeat stopped")
        shutil.rmtree(study_dir / f"trial-{trial.number}", ignore_errors=True)
        log.warning(
            "trial %d: its worker's heartbeat stopped; marked FAIL and re-queued", trial.number
        )

    storage.heartbeat_stale_trial_callback = retry_and_close


def _run_trials(
    study: optuna.Study,
    config: StudyConfig,
    objective: TrialObjective,
    tracker: StudyTracker,
    study_dir: Path,
    target: int,
    timeout_s: float | None,
) -> None:
    """Run trials until the study has `target` finished ones (or running to that), or timeout."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with tqdm(total=target, desc=study.study_name, unit="trial", file=sys.stderr) as bar:
        while True:
            _fail_trials_of_dead_workers(study, config, tracker, study_dir, bar.write)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            bar.n = min(finished, target)
            bar.refresh()
            if finished + running >= target:
                return
            if deadline is not None and time.monotonic() >= deadline:
                bar.write(f"timeout of {timeout_s} s reached: no further trial starts")
                return
            # One sampler per trial, seeded by the trial count: reproducible with one worker.
            study.sampler = build_sampler(config, config.sampler.seed + len(trials))
            objective.current = None
            error = None
            try:
                study.optimize(objective, n_trials=1, gc_after_trial=True)
            except BaseException as err:
                error = f"{type(err).__name__}: {' '.join(str(err).split())}"
                raise
            finally:
                if objective.current is not None:
                    trial = _trial(study, objective.current)
                    tracker.finish_trial(trial, config.objective, error)
                    bar.write(_trial_line(trial))


def _report(
    study: optuna.Study,
    study_name: str,
    config: StudyConfig,
    storage: str,
    tracker: StudyTracker,
    study_dir: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write reports/tune/<study>/ and log it on the study run; (summary, best_params record)."""
    # One worker at a time: the folder swap clears other swaps' leftovers.
    with waiting_lock(study_dir / "study.lock", "the study's reports"):
        summary = write_study_reports(
            study,
            study_name,
            config.run,
            config.objective,
            storage,
            reports_dir(study_name),
            tracker.parent_run_id,
        )
        record = summary.pop("record")
        tracker.log_study_summary(
            {key: summary[key] for key in SUMMARY_METRICS},
            {f"medimg.best.{key}": str(value) for key, value in record["params"].items()},
            reports_dir(study_name),
        )
    return summary, record


def _recover_from_dead_workers(
    storage: Any, study: Any, config: Any, tracker: StudyTracker, study_dir: Path
) -> None:
    """Fail (and re-queue) the trials of workers that died, and close their MLflow runs."""
    _close_heartbeat_failures(storage, config, tracker, study_dir)
    # Trials of dead workers first, so that their MLflow runs end FAILED with the reason,
    # then any other run a dead process left RUNNING (a seed run of such a trial).
    _fail_trials_of_dead_workers(study, config, tracker, study_dir, log.warning)
    for run_id in runs.close_orphaned_runs(tracker.client, [tracker.experiment_id]):
        log.warning("MLflow run %s was left RUNNING by a dead process: marked KILLED", run_id)


def run_tune(
    settings: StudySettings,
    *,
    n_trials: int | None = None,
    timeout_s: float | None = None,
    storage: str | None = None,
) -> dict[str, Any]:
    """Run study `settings.name` as one worker; write reports/tune/<study>/; return its summary.

    n_trials: the study's target of finished trials (default tune.<study>.n_trials);
    timeout_s: no trial starts after it (default tune.<study>.timeout_s);
    storage: an Optuna storage URL or journal file (default: storage.storage_url).
    Checks the data, the MLflow store and the Optuna storage before any trial.
    """
    study_name, config, run = settings.name, settings.study, settings.run.run
    data = load_checked_data(run)
    _check_image_sizes(study_name, config, data)
    check_sampler_available(study_name, config)
    url = storage_url(storage)
    definition = study_definition(config, run, data)
    storage_name = storage_study_name(study_name, definition)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is printed here
    storage = open_storage(url)
    # After the storage: checking a sqlite MLflow store creates it when it is new.
    uri = store.tracking_uri()
    store.ensure_reachable(uri)
    study = open_study(storage, storage_name, config, definition, config.repeats * run.epochs)
    study_dir = study_work_dir(storage_name, url)
    experiment = store.experiment_name(settings.run.tracking.experiment_prefix, run.dataset)
    tags = _study_tags(settings, storage_name, url, data)
    described = {  # the study run's params
        "study": config.model_dump(mode="json"),
        "run": run.model_dump(mode="json"),
        "data": definition["data"],
    }
    worker = Worker(study_dir)
    with worker.running():
        tracker = StudyTracker.open(uri, experiment, tags, described, study_dir)
        _recover_from_dead_workers(storage, study, config, tracker, study_dir)
        objective = TrialObjective(config, run, data, study_dir, worker, tracker)
        try:
            _run_trials(
                study,
                config,
                objective,
                tracker,
                study_dir,
                target=config.n_trials if n_trials is None else n_trials,
                timeout_s=config.timeout_s if timeout_s is None else timeout_s,
            )
        finally:
            tracker.close()
        summary, record = _report(study, study_name, config, describe(url), tracker, study_dir)
    return {
        **summary,
        "study": study_name,
        "storage_study": storage_name,
        "storage": describe(url),
        "parent_run_id": tracker.parent_run_id,
        "best_params": record["params"],
        "command": record["command"],
        "shadowed_by_profile": keys_shadowed_by_profile(
            settings.profile_overrides, config.run, study.best_params
        ),
        "counts": trial_counts(study),
    }
