"""One trial: the study's run with the sampled values, trained by fit_one_seed, scored on val.

No second training loop: the trial's RunConfig is the run's, re-validated with the
sampled values (medimg.config.run_with_values), and `fit_one_seed` trains it exactly
as the train stage would, with an MLflow epoch logger and the pruning callback added.
Each trial trains in its own folder, <study work>/trial-<number>/, removed when the
trial ends, so a new trial never resumes a pruned or failed one's state.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import optuna

from medimg.config.runs import RunConfig
from medimg.config.studies import StudyConfig, run_with_values
from medimg.data.prepared import PreparedData
from medimg.evaluation.metrics import classification_metrics
from medimg.inference.probabilities import predict_proba
from medimg.models.saved import load_model
from medimg.training.fit import fit_one_seed
from medimg.training.train_stage import resolve_initial_weights
from medimg.tuning.pruning import EpochPruning
from medimg.tuning.space import suggest_values
from medimg.tuning.trial_tracking import StudyTracker
from medimg.tuning.workers import Worker

EPOCHS_ATTR = "epochs_trained"
TRAIN_SECONDS_ATTR = "train_seconds"  # in model.fit, all seeds: the rest is overhead


def validation_score(model_path: Path, data: PreparedData, objective: str) -> float:
    """`objective` (a classification_metrics key) of the saved model on the val split.

    The test split is never used for tuning.
    """
    val = data.split("val")
    proba = predict_proba(load_model(model_path), np.asarray(val.x))
    return float(classification_metrics(np.asarray(val.y), proba, data.classes)[objective])


class TrialObjective:
    """The callable Optuna optimises: trains one trial and returns its mean val score.

    `current` is the number of the trial it last started (None before the first), so
    that the caller can close that trial's MLflow run whatever its state.
    """

    def __init__(
        self,
        study: StudyConfig,
        run: RunConfig,
        data: PreparedData,
        study_dir: Path,
        worker: Worker,
        tracker: StudyTracker,
    ) -> None:
        self.study = study
        self.run = run
        self.data = data
        self.study_dir = study_dir
        self.worker = worker
        self.tracker = tracker
        self.current: int | None = None

    @property
    def seeds(self) -> list[int]:
        """The same seeds in every trial, so that trials differ by their parameters only."""
        return [self.run.seed + k for k in range(self.study.repeats)]

    def __call__(self, trial: optuna.Trial) -> float:
        self.worker.claim(trial)
        self.current = trial.number
        values = suggest_values(trial, self.study.space)
        run = run_with_values(self.run, values)
        run_id = self.tracker.start_trial(trial, values, run)
        folder = self.study_dir / f"trial-{trial.number}"
        epochs, train_seconds = 0, 0.0
        try:
            scores = []
            for k, seed in enumerate(self.seeds):
                pruning = EpochPruning(trial, self.study.epoch_monitor, first_step=k * run.epochs)
                logger = self.tracker.epoch_logger(run_id, trial.number, seed, self.study.repeats)
                status = "FAILED"
                try:
                    fit = fit_one_seed(
                        resolve_initial_weights(run, folder / "initial-weights"),
                        self.data,
                        folder,
                        seed,
                        callbacks=[logger, pruning],
                        verbose=0,
                    )
                    train_seconds += fit.train_seconds
                    scores.append(validation_score(fit.model_path, self.data, self.study.objective))
                    status = "FINISHED"
                except optuna.TrialPruned:
                    status = "KILLED"
                    raise
                finally:
                    epochs += pruning.epochs_seen
                    self.tracker.finish_seed_run(logger, run_id, status)
            return float(np.mean(scores))
        finally:
            trial.set_user_attr(EPOCHS_ATTR, epochs)
            trial.set_user_attr(TRAIN_SECONDS_ATTR, train_seconds)
            shutil.rmtree(folder, ignore_errors=True)
            keras.utils.clear_session()  # free the trial's graphs before the next one
