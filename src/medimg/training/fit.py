"""Train one model with one seed: build, compile, fit its phases with durable state and resume.

The one training function of the project: the train stage and the Optuna tuner both
call `fit_one_seed`. Tracking is not done here: the caller passes callbacks (an
MLflow logger, a pruner). No TensorFlow and no MLflow here, so it runs on the GPU
machine's JAX backend as it is.

Everything one training writes lives in `work/seed-<seed>/` (checkpoints.py): a
training that was killed resumes from its last finished epoch when `fit_one_seed`
is called again with the same arguments: the weights and the optimizer state come
from the resume state, the shuffle order of the remaining epochs is the one an
uninterrupted run would have used, and the checkpoint and early stopping carry on
from the best value in history.csv. (Random layers such as dropout and noise draw
fresh numbers after a resume, so a resumed run is not bit-identical to an
uninterrupted one.)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from medimg import atomic
from medimg.config.runs import RunConfig
from medimg.data.prepared import PreparedData
from medimg.models.fine_tuning import set_trainable_top
from medimg.models.options import weights_kind
from medimg.models.registry import BACKBONE_NAME, build_backbone, get_spec
from medimg.models.transfer import load_source_model, transfer_weights
from medimg.training.batch_norm import clean_training_sample, recompute_batch_norm_statistics
from medimg.training.checkpoints import (
    HISTORY_FILE,
    EpochRecorder,
    ResumableEarlyStopping,
    ResumableReduceLROnPlateau,
    ResumeState,
    ResumeStateError,
    SavedState,
    best_epoch_index,
    read_history,
    save_model_atomically,
    truncate_history,
    write_history,
)
from medimg.training.classifier import assemble_classifier, choose_augmentation_site
from medimg.training.data import ArrayBatches, loader_augmentation
from medimg.training.phases import Phase, phase_index_at, training_phases

CHECKPOINT_FILE = "best.keras"
RUN_CONFIG_FILE = "run.json"

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

    history: every column of history.csv (Keras log keys, phase, learning_rate) -> one
        value per epoch, over all epochs of this seed including those before a resume.
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

    def best_values(self, keys: Sequence[str]) -> dict[str, float]:
        """{"best_<key>": history value at the best epoch} for each key the history has."""
        return {
            f"best_{key}": float(self.history[key][self.best_epoch - 1])
            for key in keys
            if key in self.history
        }


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


def build_classifier(
    run: RunConfig, input_shape: tuple[int, int, int], num_classes: int, augment_in_model: bool
) -> keras.Model:
    """The run's backbone (initial weights applied) wrapped for 0-255 input of `input_shape`.

    The backbone is built at `run.image_size` (None: the prepared size); the wrapper
    resizes the prepared images to it (medimg.training.classifier).
    """
    size = run.input_size(input_shape[0])
    backbone = build_backbone(
        run.model, (size, size, input_shape[2]), num_classes, run.model_options
    )
    weights = run.options().model_dump().get("weights", "none")
    # "imagenet" and keras.applications weight files are loaded by the builder itself;
    # a whole saved model (a .keras file or a model folder) seeds the backbone here.
    if weights_kind(weights) == "file" and not weights.endswith(".h5"):
        transfer_weights(load_source_model(Path(weights)), backbone, weights)
    elif weights_kind(weights) == "mlflow":
        raise ValueError(
            f"model_options.weights = {weights!r}: an MLflow URI must be downloaded to a local "
            "folder before training (the train stage does; medimg.training has no MLflow)"
        )
    return assemble_classifier(
        backbone,
        input_shape,
        get_spec(run.model).input_range,
        run.augmentation,
        augment_in_model,
        name=run.model,
    )


def smoothed_sparse_categorical_crossentropy(
    y_true: Any, y_pred: Any, label_smoothing: float = 0.0
) -> Any:
    """Categorical cross-entropy of integer labels (N,) and probabilities (N, K), smoothed.

    Keras's SparseCategoricalCrossentropy has no label_smoothing; the labels are
    one-hot encoded here so that the categorical one applies.
    """
    labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    one_hot = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
    return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=label_smoothing)


@keras.saving.register_keras_serializable(package="medimg")
class SmoothedSparseCategoricalCrossentropy(keras.losses.Loss):
    """`smoothed_sparse_categorical_crossentropy` as a Loss, so a checkpoint can be saved."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "smoothed_scce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return smoothed_sparse_categorical_crossentropy(y_true, y_pred, self.label_smoothing)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def _loss(run: RunConfig, num_classes: int) -> Any:
    if num_classes == 2:
        return keras.losses.BinaryCrossentropy(label_smoothing=run.label_smoothing)
    if run.label_smoothing == 0:
        return "sparse_categorical_crossentropy"
    return SmoothedSparseCategoricalCrossentropy(run.label_smoothing)


def learning_rate_for(run: RunConfig, phase: Phase, steps_per_epoch: int) -> float | Any:
    """The phase's learning rate: a float, or a cosine schedule over the phase's steps."""
    schedule = run.lr_schedule
    if schedule.kind != "cosine":
        return phase.learning_rate
    steps = steps_per_epoch * (phase.end_epoch - phase.first_epoch)
    return keras.optimizers.schedules.CosineDecay(
        phase.learning_rate, decay_steps=max(1, steps), alpha=schedule.min_lr / phase.learning_rate
    )


def compile_classifier(
    model: keras.Model, run: RunConfig, num_classes: int, learning_rate: float | Any
) -> None:
    """Compile with the run's optimizer at `learning_rate`, the loss, accuracy and "auc"."""
    if num_classes == 2:
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    else:
        metrics = [
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            SparseCategoricalAUC(num_classes, name="auc"),
        ]
    model.compile(
        optimizer=OPTIMIZERS[run.optimizer](learning_rate=learning_rate),
        loss=_loss(run, num_classes),
        metrics=metrics,
        run_eagerly=run.run_eagerly,
    )
    # Built now rather than at the first step: TensorFlow without a distribution strategy
    # builds the optimizer inside the traced train step, and a tf.function that creates
    # variables is traced twice (0.7 s more per training of the sample's CNN on a 2-core CPU).
    model.optimizer.build(model.trainable_variables)


def configure_phase(model: keras.Model, run: RunConfig, data: PreparedData, phase: Phase) -> None:
    """Set the phase's trainable layers, then compile (a fresh optimizer) at its rate."""
    blocks = get_spec(run.model).blocks(run.options())
    set_trainable_top(model.get_layer(BACKBONE_NAME), phase.trainable_top_blocks, blocks)
    steps_per_epoch = math.ceil(len(data.split("train")) / run.batch_size)
    compile_classifier(model, run, data.num_classes, learning_rate_for(run, phase, steps_per_epoch))


def _open_seed_dir(seed_dir: Path, run: RunConfig) -> SavedState | None:
    """The saved state to resume from, or None after emptying the folder for a fresh start.

    A folder left by a training of another configuration is emptied too: resuming
    it would mix two experiments in one model.
    """
    atomic.remove_leftovers(seed_dir)  # of a fresh start that was killed
    config_file = seed_dir / RUN_CONFIG_FILE
    config = run.model_dump(mode="json")
    same_run = config_file.is_file() and json.loads(config_file.read_text()) == config
    state = ResumeState(seed_dir).read() if same_run else None
    if state is None:
        # Never started, killed before its first epoch ended, or another configuration.
        atomic.remove_tree(seed_dir)
        seed_dir.mkdir(parents=True)
        atomic.write_file(config_file, json.dumps(config, indent=2), durable=True)
        return None
    history = read_history(seed_dir / HISTORY_FILE)
    epochs = len(history.get(run.monitor, []))
    if epochs < state.epoch or not (seed_dir / CHECKPOINT_FILE).is_file():
        raise ResumeStateError(
            f"{seed_dir}: the resume state says {state.epoch} epochs are done but "
            f"{HISTORY_FILE} has {epochs} and {CHECKPOINT_FILE} "
            f"{'exists' if (seed_dir / CHECKPOINT_FILE).is_file() else 'is missing'}; "
            f"delete {seed_dir} to train this seed afresh"
        )
    return state


def _restore(
    model: keras.Model,
    run: RunConfig,
    data: PreparedData,
    phases: list[Phase],
    seed_dir: Path,
    state: SavedState,
) -> SavedState:
    """Load the saved weights and optimizer; return the state actually loaded."""
    configure_phase(model, run, data, phases[state.phase])
    loaded = ResumeState(seed_dir).restore(model, state)
    history = truncate_history(read_history(seed_dir / HISTORY_FILE), loaded.epoch)
    write_history(seed_dir / HISTORY_FILE, history)
    return loaded


def _loader_settings(run: RunConfig, loader_workers: int | None) -> tuple[bool, int]:
    """(geometric augmentation in the loader?, loader threads) for this backend and run."""
    site = choose_augmentation_site(run.augmentation, keras.backend.backend())
    in_loader = run.augmentation.geometric and site == "loader"
    if loader_workers is None:
        busy = in_loader or run.augmentation.intensity
        loader_workers = min(os.cpu_count() or 1, MAX_LOADER_WORKERS) if busy else 1
    return in_loader, loader_workers


@dataclass(frozen=True)
class _SeedSession:
    """What every phase of one seed's training shares."""

    run: RunConfig
    data: PreparedData
    seed: int
    seed_dir: Path
    callbacks: Sequence[keras.callbacks.Callback]
    augment_in_loader: bool
    loader_workers: int
    verbose: int | str


def _phase_callbacks(
    session: _SeedSession, index: int, phase: Phase
) -> list[keras.callbacks.Callback]:
    """The recorder first (its order matters for a kill), then the run's policies, then the
    caller's callbacks; early stopping and the plateau schedule replay the history so far."""
    run = session.run
    history = read_history(session.seed_dir / HISTORY_FILE)
    previous = history.get(run.monitor, [])
    mode = MONITOR_MODES[run.monitor]
    callbacks: list[keras.callbacks.Callback] = [
        EpochRecorder(session.seed_dir, history, run.monitor, mode, index, run.checkpoint_every_s)
    ]
    if run.early_stopping.enabled:
        callbacks.append(
            ResumableEarlyStopping(
                previous,
                monitor=run.monitor,
                mode=mode,
                patience=run.early_stopping.patience,
                min_delta=run.early_stopping.min_delta,
            )
        )
    if run.lr_schedule.kind == "plateau":
        callbacks.append(
            ResumableReduceLROnPlateau(
                previous[phase.first_epoch :],
                monitor=run.monitor,
                mode=mode,
                factor=run.lr_schedule.factor,
                patience=run.lr_schedule.patience,
                min_lr=run.lr_schedule.min_lr,
            )
        )
    return [*callbacks, *session.callbacks]


def _fit_phase(
    session: _SeedSession, model: keras.Model, index: int, phase: Phase, first_epoch: int
) -> bool:
    """model.fit over [first_epoch, phase.end_epoch); True when early stopping fired."""
    run, data = session.run, session.data
    train, val = data.split("train"), data.split("val")
    augment = loader_augmentation(run.augmentation, session.augment_in_loader)
    model.fit(
        ArrayBatches(
            train.x,
            train.y,
            run.batch_size,
            data.num_classes,
            shuffle=True,
            seed=session.seed,
            augment=augment,
            first_epoch=first_epoch,
            workers=session.loader_workers,
        ),
        validation_data=ArrayBatches(val.x, val.y, run.batch_size, data.num_classes, shuffle=False),
        initial_epoch=first_epoch,
        epochs=phase.end_epoch,
        # None rather than all ones: no per-sample weights to compute for every batch.
        class_weight=(
            None
            if run.class_weights == "none"
            else class_weights_for(run, data.classes, np.asarray(train.y))
        ),
        callbacks=_phase_callbacks(session, index, phase),
        shuffle=False,  # ArrayBatches shuffles rows with its own seeded generator
        verbose=session.verbose,
    )
    return bool(model.stop_training)


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

    Resumes from work/seed-<seed>/ when a previous call with the same configuration
    was interrupted; returns the recorded result without training when that one
    finished; otherwise starts afresh in an emptied folder.

    Args:
        run: the training configuration (its model_options.weights, when a model to
            transfer from, must be a local path).
        data: the prepared arrays (load_prepared).
        work: the work folder; seed-<seed>/ is written there.
        seed: seeds Keras, numpy and Python, the shuffle order and the loader augmentation.
        callbacks: run after the recorder (which adds "phase" and "learning_rate" to
            each epoch's logs), e.g. an MLflow logger or an Optuna pruner.
        loader_workers: threads producing training batches; None = 1, or up to
            MAX_LOADER_WORKERS (the CPU count) when the loader augments.
        verbose: passed to model.fit (2 = one line per epoch).
    """
    seed_dir = Path(work) / f"seed-{seed}"
    state = _open_seed_dir(seed_dir, run)
    phases = training_phases(run)
    keras.utils.set_random_seed(seed)
    in_loader, workers = _loader_settings(run, loader_workers)
    session = _SeedSession(run, data, seed, seed_dir, callbacks, in_loader, workers, verbose)
    model = build_classifier(run, data.input_shape, data.num_classes, not in_loader)

    if state is not None:
        state = _restore(model, run, data, phases, seed_dir, state)
    done = 0 if state is None else state.epoch
    started = time.perf_counter()
    if not (state is not None and state.finished):
        current = None if state is None else state.phase
        for index in range(phase_index_at(phases, done), len(phases)):
            phase = phases[index]
            if index != current:
                configure_phase(model, run, data, phase)
            stopped = _fit_phase(session, model, index, phase, max(done, phase.first_epoch))
            if stopped:
                break
        if run.batch_norm_statistics == "clean":
            _clean_batch_norm_statistics(seed_dir / CHECKPOINT_FILE, data, seed)
        ResumeState(seed_dir).mark_finished()
    train_seconds = time.perf_counter() - started
    return _result(run, data, seed, seed_dir, done, train_seconds)


def _clean_batch_norm_statistics(checkpoint: Path, data: PreparedData, seed: int) -> None:
    """Rewrite the kept checkpoint with batch-norm statistics of clean training images.

    Before mark_finished, and atomically: a kill here leaves the checkpoint as it was and
    the seed unfinished, and the re-run recomputes (the result depends only on the
    weights and the seeded sample, so doing it twice changes nothing).
    """
    if not checkpoint.is_file():
        return  # no epoch had a finite monitor value; _result says so
    model = keras.saving.load_model(checkpoint, compile=False)
    images = clean_training_sample(data.split("train").x, seed)
    recompute_batch_norm_statistics(model, images)
    save_model_atomically(model, checkpoint)


def _result(
    run: RunConfig,
    data: PreparedData,
    seed: int,
    seed_dir: Path,
    resumed_from: int,
    train_seconds: float,
) -> FitResult:
    history = read_history(seed_dir / HISTORY_FILE)
    checkpoint = seed_dir / CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise RuntimeError(f"{checkpoint} was not written: no epoch had a finite {run.monitor}")
    monitor = history[run.monitor]
    best = best_epoch_index(monitor, MONITOR_MODES[run.monitor])
    images = len(data.split("train")) * (len(monitor) - resumed_from)
    return FitResult(
        seed=seed,
        model_path=checkpoint,
        history=history,
        best_epoch=best + 1,
        best_monitor=float(monitor[best]),
        epochs_run=len(monitor),
        train_seconds=train_seconds,
        images_per_second=images / train_seconds if train_seconds > 0 else math.nan,
        resumed_from_epoch=resumed_from,
    )
