"""A Keras callback that logs each epoch to an MLflow run: tracking reaches training only here.

Here in medimg.training, not in medimg.tracking: it reads the training's resume state
(medimg.training.checkpoints), and tracking sits below training; it also keeps Keras
and its backend out of what reads the store (the report, predict's model sources).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import keras
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from medimg.tracking import batch
from medimg.tracking.runs import store_full_error
from medimg.tracking.store import TrackingError, masked_uri, one_line
from medimg.training.checkpoints import saved_epochs, saved_history

T = TypeVar("T")


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs each epoch's Keras logs as MLflow metrics of one run, step = 1-based epoch.

    Names get an `epoch_` prefix (TensorBoard's convention): `epoch_val_accuracy`
    is the curve, while the evaluate stage logs the final `val_accuracy` of the
    chosen checkpoint to the same run. Keras passes the absolute epoch index,
    so a resumed fit continues the steps where the interrupted one stopped.

    Each step is logged once per run: steps the run already holds (a stage that was
    killed and runs again) are not sent again. With `seed_dir` (a training that
    resumes, medimg.training.checkpoints), an epoch is logged only once the resume
    state holds it, so the run's curve is the history a resume keeps: an epoch
    trained after the last saved state is trained again after a kill, and would
    otherwise be logged twice with two values. Epochs of the saved history that the
    run lacks (a kill between the saved state and the logging) are logged first.
    """

    def __init__(
        self, run_id: str, tracking_uri: str | None = None, seed_dir: Path | None = None
    ) -> None:
        super().__init__()
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)
        self.seed_dir = seed_dir
        self._logged: set[tuple[str, int]] | None = None  # (metric, step) the run holds
        self._waiting: dict[int, dict[str, float]] = {}  # 0-based epoch -> its values

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.seed_dir is not None:
            self.catch_up()

    def catch_up(self) -> None:
        """Log the epochs of the saved history that the run lacks (with `seed_dir`).

        Called at each fit's start, and by the train stage after a training that
        finished before (no fit runs then) when its run is a new one.
        """
        if self.seed_dir is None:
            return
        history = saved_history(self.seed_dir)
        for epoch in range(len(next(iter(history.values()), []))):
            self._waiting[epoch] = {key: values[epoch] for key, values in history.items()}
        self._flush()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._waiting[epoch] = {
            key: float(value)
            for key, value in (logs or {}).items()
            if isinstance(value, int | float) or getattr(value, "shape", None) == ()
        }
        self._flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._flush()  # the recorder, an earlier callback, has saved the last epochs now

    def _flush(self) -> None:
        """Log the waiting epochs that may be logged now (all of them without `seed_dir`)."""
        if self._logged is None:  # first call: what the run holds from before (a resume)
            self._logged = (
                set()
                if self.seed_dir is None
                else self._call(
                    "reading the epochs logged",
                    lambda: batch.logged_steps(self.client, self.run_id),
                )
            )
        limit = math.inf if self.seed_dir is None else saved_epochs(self.seed_dir)
        ready = sorted(epoch for epoch in self._waiting if epoch < limit)
        if not ready:
            return
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(f"epoch_{key}", value, timestamp, epoch + 1)
            for epoch in ready
            for key, value in self._waiting[epoch].items()
            if (f"epoch_{key}", epoch + 1) not in self._logged
        ]
        self._call(
            f"logging epoch {ready[-1] + 1}",
            lambda: batch.log_batch(self.client, self.run_id, metrics=metrics),
        )
        self._logged.update((metric.key, metric.step) for metric in metrics)
        for epoch in ready:
            del self._waiting[epoch]

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            # MLflow's client retries a store that is down for about 4 minutes
            # (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7, backoff 2 s doubling): a server
            # restart only pauses the training. Past that, the training stops here.
            return call()
        except MlflowException as err:
            uri = self.client.tracking_uri
            raise store_full_error(err, uri) or TrackingError(
                f"MLflow store {masked_uri(uri)} failed while {what} "
                f"of run {self.run_id} ({one_line(err)[:300]}); the training "
                "state is kept: once the store answers, re-run the stage to resume"
            ) from None
