"""A Keras callback that logs each epoch to an MLflow run: tracking reaches training only here.

Kept out of medimg.tracking so that reading the store (the report, predict's model
sources) does not import Keras and its backend.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import keras
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from medimg.tracking.store import TrackingError, masked_uri, one_line


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs each epoch's Keras logs as MLflow metrics of one run, step = 1-based epoch.

    Names get an `epoch_` prefix (TensorBoard's convention): `epoch_val_accuracy`
    is the curve, while the evaluate stage logs the final `val_accuracy` of the
    chosen checkpoint to the same run. Keras passes the absolute epoch index,
    so a resumed fit continues the steps where the interrupted one stopped.
    """

    def __init__(
        self,
        run_id: str,
        tracking_uri: str | None = None,
        finished: Mapping[str, list[float]] | None = None,
    ) -> None:
        """finished: the history of epochs trained before (a resume): any of them missing
        from the run (a kill between the saved state and this logger) is logged first."""
        super().__init__()
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)
        self.finished = dict(finished or {})

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not self.finished:
            return
        first_key = next(iter(self.finished))
        logged = {m.step for m in self.client.get_metric_history(self.run_id, f"epoch_{first_key}")}
        for epoch in range(len(self.finished[first_key])):
            if epoch + 1 not in logged:
                self._log(epoch, {key: values[epoch] for key, values in self.finished.items()})
        self.finished = {}  # once: a second phase's fit must not log them again

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._log(epoch, logs or {})

    def _log(self, epoch: int, logs: Mapping[str, Any]) -> None:
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(key=f"epoch_{key}", value=float(value), timestamp=timestamp, step=epoch + 1)
            for key, value in logs.items()
            if (isinstance(value, int | float) or getattr(value, "shape", None) == ())
            and math.isfinite(float(value))
        ]
        if not metrics:
            return
        try:
            # MLflow's client retries a store that is down for about 4 minutes
            # (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7, backoff 2 s doubling): a server
            # restart only pauses the training. Past that, the training stops here.
            self.client.log_batch(self.run_id, metrics=metrics)
        except MlflowException as err:
            raise TrackingError(
                f"MLflow store {masked_uri(self.client.tracking_uri)} failed while logging "
                f"epoch {epoch + 1} of run {self.run_id} ({one_line(err)[:300]}); the training "
                "state is kept: once the store answers, re-run the stage to resume"
            ) from None
