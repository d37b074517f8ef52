"""Train one model with one seed: build, compile, fit with checkpointing and resume.

Tracking is not done here: the caller passes callbacks (e.g. an MLflow logger).
Everything one training writes lives in `work/seed-<seed>/`:

    best.keras    the best epoch by `run.monitor` (ModelCheckpoint, save_best_only)
    history.csv   one row per finished epoch (CSVLogger; 0-based `epoch` column)
    backup/       Keras BackupAndRestore state; present only while a training is unfinished

A training that was killed resumes from its last finished epoch when
`fit_one_seed` is called again with the same arguments: the weights and the
optimizer state come from backup/, the shuffle order of the remaining epochs is
the one an uninterrupted run would have used, and the checkpoint and early
stopping carry on from the best value in history.csv. (Random layers such as
dropout and noise draw fresh numbers after a resume, so a resumed run is not
bit-identical to an uninterrupted one.)
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from medimg.config import RunConfig
from medimg.models import get_builder
from medimg.models.augmentation_layers import choose_augmentation_site
from medimg.training.data import ArrayBatches, PreparedData, loader_augmentation

CHECKPOINT_FILE = "best.keras"
HISTORY_FILE = "history.csv"
BACKUP_DIR = "backup"
# Written by keras.callbacks.BackupAndRestore next to its weights: {"epoch": <epochs done>, ...}.
BACKUP_METADATA_FILE = "training_metadata.json"

OPTIMIZERS: dict[str, type[keras.optimizers.Optimizer]] = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}
# Direction of improvement of each monitor RunConfig allows.
MONITOR_MODES: dict[str, str] = {"val_auc": "max", "val_accuracy": "max", "val_loss": "min"}
# Worker threads of the training loader when it augments on the CPU (Pillow
# releases the GIL while it warps); without loader augmentation one is plenty.
MAX_LOADER_WORKERS = 8


@dataclass
class FitResult:
    """What one seed's training produced.

    history: every Keras log key (loss, accuracy, auc, val_*) -> one value per epoch,
        over all epochs of this seed including those before a resume.
    best_epoch: 1-based epoch of the checkpoint (best `run.monitor`).
    epochs_run: epochs finished in total (fewer than run.epochs after early stopping).
    train_seconds: wall time of model.fit in this call (validation included).
    images_per_second: training images processed in this call / train_seconds.
    resumed_from_epoch: epochs already finished when this call started (0 = fresh).
    """

    seed: int
    model_path: Path
    history: dict[str, list[float]]
    best_epoch: int
    best_monitor: float
    epochs_run: int
    train_seconds: float
    images_per_second: float
    resumed_from_epoch: int


@keras.saving.register_keras_serializable(package="medimg")
class SparseCategoricalAUC(keras.metrics.AUC):
    """ROC AUC from integer labels and softmax outputs: one-vs-rest per class, then the mean.

    The same quantity as sklearn's roc_auc_score(y, p, multi_class="ovr",
    average="macro"), up to Keras's threshold approximation. keras.metrics.AUC
    wants labels shaped like the predictions, so labels are one-hot encoded here.
    """

    def __init__(self, num_classes: int, name: str = "auc", **kwargs: Any) -> None:
        # from_config passes these back; they are fixed by num_classes.
        kwargs.pop("multi_label", None)
        kwargs.pop("num_labels", None)
        super().__init__(name=name, multi_label=True, num_labels=num_classes, **kwargs)
        self.num_classes = num_classes

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        one_hot = ops.one_hot(labels, self.num_classes, dtype=y_pred.dtype)
        return super().update_state(one_hot, y_pred, sample_weight)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes}


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that starts from the epochs finished before a resume.

    Keras's version resets its best value and patience counter at every fit();
    here they are replayed from the monitor values in history.csv.
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


def class_weights_for(run: RunConfig, classes: Sequence[str], y: np.ndarray) -> dict[int, float]:
    """Keras class_weight {class index: weight} from run.class_weights.

    "none": all 1. "balanced": n_samples / (n_classes * count of the class), the
    formula of sklearn's compute_class_weight("balanced"). A mapping class name ->
    weight: the named weights, 1 for classes it does not name.
    """
    if run.class_weights == "none":
        return {i: 1.0 for i in range(len(classes))}
    if run.class_weights == "balanced":
        counts = np.bincount(np.asarray(y), minlength=len(classes))
        if (counts == 0).any():
            empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
            raise ValueError(f"class_weights 'balanced': no training images of class(es) {empty}")
        return {i: float(len(y) / (len(classes) * n)) for i, n in enumerate(counts)}
    unknown = set(run.class_weights) - set(classes)
    if unknown:
        raise ValueError(f"class_weights names unknown classes {sorted(unknown)}; known: {classes}")
    return {i: float(run.class_weights.get(name, 1.0)) for i, name in enumerate(classes)}


def build_compiled_model(
    run: RunConfig, input_shape: tuple[int, int, int], num_classes: int, augment_in_model: bool
) -> keras.Model:
    """The registry model of `run`, compiled with its optimizer, the loss, accuracy and "auc"."""
    model = get_builder(run.model)(
        input_shape,
        num_classes,
        **run.model_options,
        augmentation=run.augmentation,
        augment_in_model=augment_in_model,
        image_size=run.image_size,
    )
    if num_classes == 2:
        loss = "binary_crossentropy"
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    else:
        loss = "sparse_categorical_crossentropy"
        metrics = [
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            SparseCategoricalAUC(num_classes, name="auc"),
        ]
    model.compile(
        optimizer=OPTIMIZERS[run.optimizer](learning_rate=run.learning_rate),
        loss=loss,
        metrics=metrics,
    )
    return model


def read_history(path: Path) -> dict[str, list[float]]:
    """history.csv -> {log key: values per epoch}, in epoch order, without the epoch column."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: int(row["epoch"]))
    keys = [key for key in (rows[0] if rows else {}) if key != "epoch"]
    return {key: [float(row[key]) for row in rows] for key in keys}


def _finished_epochs_in_backup(backup_dir: Path) -> int:
    metadata = backup_dir / BACKUP_METADATA_FILE
    if not metadata.is_file():
        return 0
    try:
        return int(json.loads(metadata.read_text())["epoch"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{metadata}: unreadable resume state ({err}); delete {backup_dir} to start afresh"
        ) from None


def _keep_epochs_before(history_path: Path, epochs: int) -> None:
    """Drop history rows of epochs >= `epochs` (a kill after CSVLogger, before the backup)."""
    if not history_path.is_file():
        return
    with history_path.open(newline="") as f:
        reader = csv.DictReader(f)
        fieldnames = reader.fieldnames or []
        rows = [row for row in reader if int(row["epoch"]) < epochs]
    tmp = history_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(history_path)


def _best_epoch(values: Sequence[float], mode: str) -> int:
    """0-based index of the first best value (ModelCheckpoint keeps the first of equals)."""
    array = np.asarray(values, dtype=float)
    if np.isnan(array).all():
        raise ValueError("every epoch's monitor value is NaN: the training diverged")
    return int(np.nanargmax(array) if mode == "max" else np.nanargmin(array))


def fit_one_seed(
    run: RunConfig,
    data: PreparedData,
    work: Path,
    seed: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    *,
    loader_workers: int | None = None,
    verbose: int | str = 2,
) -> FitResult:
    """Train `run`'s model on `data` (train split; val split for the monitor) with `seed`.

    Resumes from work/seed-<seed>/backup when a previous call was interrupted;
    otherwise starts afresh, replacing that folder's checkpoint and history.

    Args:
        run: the training configuration.
        data: the prepared arrays (load_prepared).
        work: the run's work folder (paths.work_dir(run name)); seed-<seed>/ is written there.
        seed: seeds Keras, numpy and Python, the shuffle order and the loader augmentation.
        callbacks: appended after the checkpoint, history and backup callbacks.
        loader_workers: threads producing training batches; None = 1, or up to
            MAX_LOADER_WORKERS (the CPU count) when the loader augments.
        verbose: passed to model.fit (2 = one line per epoch).
    """
    seed_dir = Path(work) / f"seed-{seed}"
    checkpoint_path = seed_dir / CHECKPOINT_FILE
    history_path = seed_dir / HISTORY_FILE
    backup_dir = seed_dir / BACKUP_DIR
    monitor_mode = MONITOR_MODES[run.monitor]

    resumed_from_epoch = _finished_epochs_in_backup(backup_dir)
    if resumed_from_epoch == 0:
        # A finished or never-started training: nothing here belongs to the new one.
        shutil.rmtree(seed_dir, ignore_errors=True)
    _keep_epochs_before(history_path, resumed_from_epoch)
    seed_dir.mkdir(parents=True, exist_ok=True)
    previous = read_history(history_path).get(run.monitor, [])
    if resumed_from_epoch and (
        len(previous) != resumed_from_epoch or not checkpoint_path.is_file()
    ):
        raise ValueError(
            f"{seed_dir}: the backup says {resumed_from_epoch} epochs are done but "
            f"{history_path.name} has {len(previous)} and {checkpoint_path.name} "
            f"{'exists' if checkpoint_path.is_file() else 'is missing'}; "
            f"delete {seed_dir} to start afresh"
        )

    keras.utils.set_random_seed(seed)
    augmentation = run.augmentation
    site = choose_augmentation_site(augmentation, keras.backend.backend())
    augment_in_loader = augmentation.geometric and site == "loader"
    model = build_compiled_model(
        run, data.input_shape, data.num_classes, augment_in_model=not augment_in_loader
    )

    if loader_workers is None:
        loader_workers = min(os.cpu_count() or 1, MAX_LOADER_WORKERS) if augment_in_loader else 1
    train = data.split("train")
    train_batches = ArrayBatches(
        train.x,
        train.y,
        run.batch_size,
        data.num_classes,
        shuffle=True,
        seed=seed,
        augment=loader_augmentation(augmentation) if augment_in_loader else None,
        first_epoch=resumed_from_epoch,
        workers=loader_workers,
    )
    val = data.split("val")
    val_batches = ArrayBatches(val.x, val.y, run.batch_size, data.num_classes, shuffle=False)

    # Order matters for a kill between two callbacks: history and checkpoint are
    # written before the backup, so the backup never records an epoch whose row
    # or checkpoint is missing (an extra history row is dropped on resume).
    fit_callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.CSVLogger(str(history_path), append=True),
        keras.callbacks.ModelCheckpoint(
            str(checkpoint_path),
            monitor=run.monitor,
            mode=monitor_mode,
            save_best_only=True,
            initial_value_threshold=(
                previous[_best_epoch(previous, monitor_mode)] if previous else None
            ),
        ),
    ]
    if run.early_stopping.enabled:
        fit_callbacks.append(
            ResumableEarlyStopping(
                previous,
                monitor=run.monitor,
                mode=monitor_mode,
                patience=run.early_stopping.patience,
                min_delta=run.early_stopping.min_delta,
            )
        )
    fit_callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir)))
    fit_callbacks.extend(callbacks)

    start = time.perf_counter()
    model.fit(
        train_batches,
        validation_data=val_batches,
        epochs=run.epochs,
        # None rather than all ones: no per-sample weights to compute for every batch.
        class_weight=(
            None
            if run.class_weights == "none"
            else class_weights_for(run, data.classes, np.asarray(train.y))
        ),
        callbacks=fit_callbacks,
        shuffle=False,  # ArrayBatches shuffles rows with its own seeded generator
        verbose=verbose,
    )
    train_seconds = time.perf_counter() - start

    history = read_history(history_path)
    epochs_run = len(history.get(run.monitor, []))
    if not checkpoint_path.is_file():
        raise RuntimeError(
            f"{checkpoint_path} was not written: no epoch had a finite {run.monitor}"
        )
    best_index = _best_epoch(history[run.monitor], monitor_mode)
    images = len(train) * (epochs_run - resumed_from_epoch)
    return FitResult(
        seed=seed,
        model_path=checkpoint_path,
        history=history,
        best_epoch=best_index + 1,
        best_monitor=float(history[run.monitor][best_index]),
        epochs_run=epochs_run,
        train_seconds=train_seconds,
        images_per_second=images / train_seconds if train_seconds > 0 else math.nan,
        resumed_from_epoch=resumed_from_epoch,
    )
