"""Training state on disk that a kill at any instant leaves usable.

One seed's training writes, in its work folder:

    history.csv      one row per finished epoch (0-based `epoch`, `phase`, `learning_rate`,
                     every Keras log key)
    best.keras       the best epoch by the run's monitor
    state/           the resume state: state.json + the weights (model and optimizer) of
                     the last finished epoch, and of the one before

Every file is written beside its final name and renamed into place (os.replace is
atomic on POSIX), with an fsync before the rename, so a SIGKILL or power cut leaves
either the previous or the new version, never half a file. Keras's own
BackupAndRestore and ModelCheckpoint rewrite their files in place: a kill right at
an epoch boundary left `latest.weights.h5` half-written and every later resume
failing with "bad object header version number".

At an epoch's end the order is: history row, best checkpoint, then the resume
state last. A resume trusts state.json and drops history rows after its epoch.
The best checkpoint and the resume state are written together, at most every
`save_every_s` seconds and after the last epoch of a fit: a best epoch reached
in between waits in memory, so best.keras never belongs to an epoch after the
saved state's.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medimg import atomic
from medimg.errors import UserError

log = logging.getLogger(__name__)

STATE_DIR = "state"
STATE_FILE = "state.json"
HISTORY_FILE = "history.csv"
EPOCH_COLUMN = "epoch"


class ResumeStateError(UserError, RuntimeError):
    """The saved training state cannot be used; the message says which file and what to do."""


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_model_atomically(model: keras.Model, dest: Path) -> None:
    """model.save() to `dest` through a partial file, fsynced, then renamed over it.

    A failed write (a full disk) removes the partial file and raises an OutputError.
    """
    partial = dest.with_name(f".{dest.stem}.partial{dest.suffix}")
    with _removed_on_failure(partial), atomic.output_errors(dest):
        model.save(partial)
        _fsync_file(partial)
    os.replace(partial, dest)
    atomic.fsync_dir(dest.parent)


@contextmanager
def _removed_on_failure(path: Path) -> Iterator[None]:
    """Delete `path` (written in the block) when the block fails: no half-written file stays."""
    try:
        yield
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- history


def read_history(path: Path) -> dict[str, list[float]]:
    """history.csv -> {column: values per epoch}, in epoch order, without the epoch column."""
    if not Path(path).is_file():
        return {}
    with Path(path).open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: int(row[EPOCH_COLUMN]))
    keys = [key for key in (rows[0] if rows else {}) if key != EPOCH_COLUMN]
    return {key: [float(row[key]) for row in rows] for key in keys}


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    """Write {column: values per epoch} as history.csv (0-based epoch column first), atomically."""
    keys = list(history)
    n = len(history[keys[0]]) if keys else 0
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([EPOCH_COLUMN, *keys])
    for epoch in range(n):
        writer.writerow([epoch, *(repr(float(history[key][epoch])) for key in keys)])
    with atomic.output_errors(Path(path)):
        atomic.write_file(Path(path), buffer.getvalue().encode(), durable=True)


def truncate_history(history: dict[str, list[float]], epochs: int) -> dict[str, list[float]]:
    """The first `epochs` epochs of `history` (rows written after the last saved state go)."""
    return {key: values[:epochs] for key, values in history.items()}


def best_epoch_index(values: Sequence[float], mode: str) -> int:
    """0-based index of the first best value (a later equal value is no improvement)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0 or np.isnan(array).all():
        raise ValueError("every epoch's monitor value is NaN: the training diverged")
    return int(np.nanargmax(array) if mode == "max" else np.nanargmin(array))


# ----------------------------------------------------------------------------- resume state


@dataclass(frozen=True)
class SavedState:
    """What state.json records: `epoch` epochs are finished; `phase` is the index of the
    training phase whose compile state (optimizer) the weights file holds."""

    epoch: int
    phase: int
    weights: str
    previous: dict[str, Any] | None = None
    finished: bool = False


class ResumeState:
    """The resume state of one seed's training: `<seed dir>/state/`."""

    def __init__(self, seed_dir: Path) -> None:
        self.directory = Path(seed_dir) / STATE_DIR
        self.file = self.directory / STATE_FILE

    def read(self) -> SavedState | None:
        """The saved state, or None when no epoch has finished yet."""
        if not self.file.is_file():
            return None
        try:
            raw = json.loads(self.file.read_text())
            return SavedState(
                epoch=int(raw["epoch"]),
                phase=int(raw["phase"]),
                weights=str(raw["weights"]),
                previous=raw.get("previous"),
                finished=bool(raw.get("finished", False)),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            # Written atomically, so this is damage from outside: say what to do.
            raise ResumeStateError(
                f"{self.file}: unreadable resume state ({err}); delete {self.directory.parent} "
                "to train this seed afresh"
            ) from None

    def save(self, model: keras.Model, epoch: int, phase: int) -> None:
        """Record that `epoch` epochs are finished, with the model's and optimizer's weights."""
        self.directory.mkdir(parents=True, exist_ok=True)
        current = self.read()
        weights = self.directory / f"epoch-{epoch:04d}.weights.h5"
        # A fresh name: nothing reads it until state.json says so. h5py leaves the file
        # half-written when the disk is full (and says so in a RuntimeError).
        with _removed_on_failure(weights), atomic.output_errors(weights):
            model.save_weights(weights)
            _fsync_file(weights)
        previous = (
            None
            if current is None
            else {"epoch": current.epoch, "phase": current.phase, "weights": current.weights}
        )
        state = {"epoch": epoch, "phase": phase, "weights": weights.name, "previous": previous}
        with atomic.output_errors(self.file):
            atomic.write_file(self.file, json.dumps(state, indent=2) + "\n", durable=True)
        keep = {weights.name, *([previous["weights"]] if previous else [])}
        for old in self.directory.glob("epoch-*.weights.h5"):
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def mark_finished(self) -> None:
        """Record that training ended (all epochs, or early stopping): nothing to resume."""
        state = self.read()
        if state is None:
            raise ResumeStateError(f"{self.file}: no epoch was saved, so none can be finished")
        raw = json.loads(self.file.read_text())
        atomic.write_file(
            self.file, json.dumps({**raw, "finished": True}, indent=2) + "\n", durable=True
        )

    def restore(self, model: keras.Model, state: SavedState) -> SavedState:
        """Load `state`'s weights into `model` (compiled for `state.phase`); return what was loaded.

        Falls back to the previous epoch's state when the latest weights file cannot be
        read (damaged from outside: the writes themselves are atomic).
        """
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(self.directory / state.weights)
            return state
        except (OSError, ValueError, KeyError) as err:
            if not state.previous:
                raise ResumeStateError(
                    f"{self.directory / state.weights}: cannot load the resume state ({err}); "
                    f"delete {self.directory.parent} to train this seed afresh"
                ) from None
            log.warning(
                "%s unreadable (%s); resuming from the epoch before",
                self.directory / state.weights,
                err,
            )
            previous = SavedState(**state.previous, previous=None)
            model.load_weights(self.directory / previous.weights)
            return previous


def saved_epochs(seed_dir: Path) -> int:
    """How many epochs the resume state of `seed_dir` holds: a resume never trains them again."""
    state = ResumeState(seed_dir).read()
    return 0 if state is None else state.epoch


def saved_history(seed_dir: Path) -> dict[str, list[float]]:
    """The rows of history.csv that the resume state holds (those a resume keeps)."""
    return truncate_history(read_history(Path(seed_dir) / HISTORY_FILE), saved_epochs(seed_dir))


# ----------------------------------------------------------------------------- callbacks


class EpochRecorder(keras.callbacks.Callback):
    """At every epoch's end the history row; then the best checkpoint and the resume state.

    One callback rather than three, because their order is what makes a kill at
    any instant recoverable (see the module docstring).

    Args:
        seed_dir: the seed's work folder.
        history: the rows of the epochs finished before this fit (they are kept).
        monitor, mode: the checkpoint's metric and its direction ("max" or "min").
        phase: the index of the training phase this fit runs (written with each row).
        save_every_s: the best checkpoint and the resume state are written after the
            first epoch, then when this many seconds have passed since the last write,
            and after the fit's last epoch (0: after every epoch).
    """

    def __init__(
        self,
        seed_dir: Path,
        history: dict[str, list[float]],
        monitor: str,
        mode: str,
        phase: int,
        save_every_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.seed_dir = Path(seed_dir)
        self.history = {key: list(values) for key, values in history.items()}
        self.monitor, self.mode, self.phase = monitor, mode, phase
        self.save_every_s = save_every_s
        self.state = ResumeState(seed_dir)
        previous = self.history.get(monitor, [])
        self.best = (
            previous[best_epoch_index(previous, mode)]
            if previous and not np.isnan(previous).all()
            else None
        )
        self._last_save: float | None = None  # time.monotonic() of the last write
        self._unsaved_epochs: int | None = None  # epochs finished, when not written yet
        self._unsaved_best: list[np.ndarray] | None = None  # a best epoch's weights, waiting

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = {} if logs is None else logs
        # Added to the logs Keras passes on, so later callbacks (the MLflow logger) see
        # the phase on the curves too.
        logs.update(phase=float(self.phase + 1), learning_rate=_learning_rate(self.model))
        row = {key: float(value) for key, value in logs.items()}
        n_before = len(next(iter(self.history.values()), []))
        # In the order Keras logs them (a set's order would change with the hash seed,
        # and history.csv's columns with it).
        for key in [key for key in row if key not in self.history]:
            self.history[key] = [math.nan] * n_before
        for key in self.history:
            self.history[key].append(row.get(key, math.nan))
        write_history(self.seed_dir / HISTORY_FILE, self.history)

        self._unsaved_epochs = epoch + 1
        due = self._last_save is None or time.monotonic() - self._last_save >= self.save_every_s
        if self._improved(row.get(self.monitor, math.nan)):
            self.best = row[self.monitor]
            # Written now with the rest, or kept (a copy) until the next write.
            self._unsaved_best = (
                None if due else [np.array(w, copy=True) for w in self.model.get_weights()]
            )
            if due:
                save_model_atomically(self.model, self.seed_dir / "best.keras")
        if due:
            self._save()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._unsaved_epochs is not None:
            self._save()

    def _save(self) -> None:
        """A best epoch still in memory into best.keras, then the resume state."""
        if self._unsaved_best is not None:
            current = self.model.get_weights()
            self.model.set_weights(self._unsaved_best)
            save_model_atomically(self.model, self.seed_dir / "best.keras")
            self.model.set_weights(current)
            self._unsaved_best = None
        self.state.save(self.model, self._unsaved_epochs, self.phase)
        self._unsaved_epochs = None
        self._last_save = time.monotonic()


def _learning_rate(model: keras.Model) -> float:
    rate = model.optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(rate))


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that starts from the epochs finished before a resume or phase.

    Keras's version resets its best value and patience counter at every fit();
    here they are replayed from the monitor values already in the history.
    """

    def __init__(self, previous_values: Sequence[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.previous_values = list(previous_values)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        sign = 1.0 if self.mode == "max" else -1.0
        for value in self.previous_values:  # the same rule as EarlyStopping.on_epoch_end
            self.wait += 1
            if self.best is None or sign * (value - self.best) > self.min_delta:
                self.best = value
                self.wait = 0


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose patience counts the phase's epochs finished before a resume.

    The learning rate itself is restored with the optimizer; only the best value
    and the wait counter are replayed here, without reducing anything.
    """

    def __init__(self, previous_values: Sequence[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.previous_values = list(previous_values)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        if self.previous_values and self.monitor_op is None:
            self._set_monitor_op()
        for value in self.previous_values:  # the rule of ReduceLROnPlateau.on_epoch_end
            if self._is_improvement(value, self.best):
                self.best = value
                self.wait = 0
            else:
                self.wait += 1
                if self.wait >= self.patience:  # it reduced the rate then, and started again
                    self.wait = 0
