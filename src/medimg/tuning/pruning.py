"""Pruning from per-epoch validation values: a Keras callback that reports to an Optuna trial.

Not optuna_integration.keras.KerasPruningCallback, which would work with Keras 3 (it
only reads `logs` in on_epoch_end): it reports step = epoch, so the seeds of a
trial with repeats > 1 would report the same steps, and it warns and carries on when
the monitored key is missing. Here each seed reports on its own steps and a missing
key is an error.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import optuna


class EpochPruning(keras.callbacks.Callback):
    """Report `monitor` to `trial` after each epoch; raise optuna.TrialPruned when told to.

    The step is first_step + the 0-based epoch, so that seed k of a trial (first_step =
    k * epochs) reports after seed k-1 on one axis, the same axis in every trial.
    `epochs_seen` counts the epochs this callback saw (the work a pruned trial did).
    """

    def __init__(self, trial: optuna.Trial, monitor: str, first_step: int = 0) -> None:
        super().__init__()
        self.trial = trial
        self.monitor = monitor
        self.first_step = first_step
        self.epochs_seen = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            raise KeyError(
                f"pruning follows {self.monitor!r}, which the epoch's logs lack "
                f"(they have {sorted(logs)})"
            )
        self.epochs_seen += 1
        value = float(logs[self.monitor])
        self.trial.report(value, step=self.first_step + epoch)
        if self.trial.should_prune():
            shown = f"{value:.4f}" if math.isfinite(value) else str(value)
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} ({self.monitor} = {shown})")
