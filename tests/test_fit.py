"""fit_one_seed: checkpoint of the best epoch, resume after a kill, class weights, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.utils.class_weight import compute_class_weight

from medimg.config.runs import EarlyStoppingConfig, RunConfig, TrainAugmentConfig
from medimg.data.prepared import load_prepared
from medimg.inference.probabilities import predict_proba
from medimg.models.saved import load_model
from medimg.training.checkpoints import ResumeState
from medimg.training.fit import (
    ResumableEarlyStopping,
    SparseCategoricalAUC,
    class_weights_for,
    compile_classifier,
    fit_one_seed,
)

LOG_KEYS = {"loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc"}
# history.csv columns beside Keras's logs: the training phase and the learning rate
HISTORY_KEYS = LOG_KEYS | {"phase", "learning_rate"}


def write_prepared(directory: Path, classes: list[str], n: int = 16, size: int = 32) -> None:
    """Learnable toy data: the class index sets the mean brightness of an image."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        y = np.arange(n) % len(classes)
        level = 40 + 160 * y / (len(classes) - 1)
        noise = rng.normal(0, 30, (n, size, size, 1))
        x = np.clip(level[:, None, None, None] + noise, 0, 255).astype(np.uint8)
        np.save(directory / f"{split}_x.npy", x)
        np.save(directory / f"{split}_y.npy", y.astype(np.int64))
    meta = {"dataset": directory.name, "classes": classes, "channels": 1, "image_size": size}
    (directory / "meta.json").write_text(json.dumps(meta))


def xray_run(**overrides) -> RunConfig:
    settings = {
        "dataset": "chest_xray",
        "split_protocol": "official",
        "model": "xray_cnn",
        "model_options": {"feature_maps": 4, "dense_units": [8, 8]},
        "epochs": 4,
        "batch_size": 4,
        "checkpoint_every_s": 0,  # the state after every epoch, unless a test says otherwise
        **overrides,
    }
    return RunConfig(**settings)


@pytest.fixture
def binary_data(tmp_path):
    write_prepared(tmp_path / "chest_xray", ["NORMAL", "PNEUMONIA"])
    return load_prepared(tmp_path / "chest_xray")


class RecordWeights(keras.callbacks.Callback):
    """Weights and logs at the end of every epoch; weights and optimizer step at the start."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch_weights: dict[int, list[np.ndarray]] = {}
        self.epochs: list[int] = []
        self.start_weights: list[np.ndarray] = []
        self.start_iterations = -1

    def on_train_begin(self, logs=None):
        self.start_weights = self.model.get_weights()
        self.start_iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)
        self.epoch_weights[epoch] = self.model.get_weights()


class KillAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.slow
def test_checkpoint_is_the_best_epoch_by_monitor(binary_data, tmp_path):
    record = RecordWeights()
    run = xray_run(epochs=3, monitor="val_loss", learning_rate=0.01)
    result = fit_one_seed(run, binary_data, tmp_path / "work", seed=1, callbacks=[record])

    assert set(result.history) == HISTORY_KEYS
    assert result.epochs_run == 3 and result.resumed_from_epoch == 0
    val_loss = result.history["val_loss"]
    assert result.best_epoch == int(np.argmin(val_loss)) + 1
    assert result.best_monitor == min(val_loss)
    assert result.model_path == tmp_path / "work" / "seed-1" / "best.keras"
    saved = load_model(result.model_path).get_weights()
    for a, b in zip(saved, record.epoch_weights[result.best_epoch - 1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert result.images_per_second > 0
    state = json.loads((tmp_path / "work" / "seed-1" / "state" / "state.json").read_text())
    assert state["finished"] is True and state["epoch"] == 3


@pytest.mark.slow
def test_resume_after_interruption_continues_at_the_next_epoch(binary_data, tmp_path):
    run = xray_run(epochs=4)
    work = tmp_path / "work"
    killed = RecordWeights()
    with pytest.raises(KeyboardInterrupt):
        fit_one_seed(run, binary_data, work, seed=3, callbacks=[killed, KillAfterEpoch(1)])
    assert killed.epochs == [0, 1]

    resumed = RecordWeights()
    result = fit_one_seed(run, binary_data, work, seed=3, callbacks=[resumed])

    assert result.resumed_from_epoch == 2
    assert resumed.epochs == [2, 3]  # only the two missing epochs ran
    assert result.epochs_run == 4
    assert all(len(values) == 4 for values in result.history.values())
    # Weights and optimizer state continue from the end of epoch 2.
    for a, b in zip(resumed.start_weights, killed.epoch_weights[1], strict=True):
        np.testing.assert_array_equal(a, b)
    steps_per_epoch = 4  # 16 images, batch 4
    assert resumed.start_iterations == 2 * steps_per_epoch

    # The same call again trains nothing: the seed is finished.
    untouched = RecordWeights()
    same = fit_one_seed(run, binary_data, work, seed=3, callbacks=[untouched])
    assert untouched.epochs == [] and same.history == result.history
    # Another configuration in the same folder starts afresh.
    again = fit_one_seed(xray_run(epochs=1), binary_data, work, seed=3)
    assert again.resumed_from_epoch == 0 and again.epochs_run == 1


@pytest.mark.slow
def test_checkpoints_written_at_intervals_keep_the_best_epoch_and_resume(binary_data, tmp_path):
    """With epochs shorter than checkpoint_every_s the state is written after the first
    epoch and after the last; a best epoch in between waits in memory, and a kill in
    between resumes from the last written state, training each epoch once."""
    run = xray_run(epochs=4, monitor="val_loss", learning_rate=0.01, checkpoint_every_s=3600)
    work = tmp_path / "work"
    killed = RecordWeights()
    with pytest.raises(KeyboardInterrupt):
        fit_one_seed(run, binary_data, work, seed=1, callbacks=[killed, KillAfterEpoch(2)])
    assert killed.epochs == [0, 1, 2]
    assert ResumeState(work / "seed-1").read().epoch == 1  # written after the first only
    assert len(pd.read_csv(work / "seed-1" / "history.csv")) == 3  # rows ahead of the state

    resumed = RecordWeights()
    result = fit_one_seed(run, binary_data, work, seed=1, callbacks=[resumed])
    assert result.resumed_from_epoch == 1 and resumed.epochs == [1, 2, 3]
    assert all(len(values) == 4 for values in result.history.values())
    for a, b in zip(resumed.start_weights, killed.epoch_weights[0], strict=True):
        np.testing.assert_array_equal(a, b)
    # After the fit's last epoch everything is written: the state, and best.keras with
    # the weights of the best epoch, which was not the first (it waited in memory).
    assert ResumeState(work / "seed-1").read().epoch == 4
    assert result.best_epoch > 2
    saved = load_model(result.model_path).get_weights()
    for a, b in zip(saved, resumed.epoch_weights[result.best_epoch - 1], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_multiclass_fit_logs_auc_and_predicts_probabilities(tmp_path):
    classes = ["glioma_tumor", "meningioma_tumor", "no_tumor"]
    write_prepared(tmp_path / "mri", classes, n=12)
    data = load_prepared(tmp_path / "mri")
    run = RunConfig(
        dataset="mri",
        split_protocol="pooled",
        model="mri_cnn",
        model_options={"filters": [4, 8], "dense_units": 8},
        epochs=2,
        batch_size=4,
        class_weights="balanced",
        early_stopping=EarlyStoppingConfig(enabled=True, patience=1),
        augmentation=TrainAugmentConfig(rotation_deg=5, zoom_range=(1.0, 1.1), where="loader"),
    )
    result = fit_one_seed(run, data, tmp_path / "work", seed=0, loader_workers=2)
    assert set(result.history) == HISTORY_KEYS
    assert all(0 <= v <= 1 for v in result.history["val_auc"])

    model = load_model(result.model_path)
    assert "random_rotation" not in {layer.name for layer in model.layers}  # done by the loader
    assert "backbone" in {layer.name for layer in model.layers}
    x = data.split("test").x[:5]
    probabilities = predict_proba(model, np.asarray(x))
    assert probabilities.shape == (5, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_binary_predict_proba_has_a_column_per_class():
    inputs = keras.Input((2, 2, 1))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).integers(0, 256, (6, 2, 2, 1), dtype=np.uint8)
    p1 = keras.ops.convert_to_numpy(model(x.astype("float32")))[:, 0]
    probabilities = predict_proba(model, x, batch_size=4)
    np.testing.assert_allclose(probabilities[:, 1], p1, rtol=1e-6)
    np.testing.assert_allclose(probabilities[:, 0], 1 - p1, rtol=1e-6)
    with pytest.raises(ValueError, match="expects"):
        predict_proba(model, np.zeros((1, 3, 3, 1), np.uint8))


@pytest.mark.parametrize("rows", [1, 3, 4, 9])
def test_predict_proba_matches_the_model_for_any_number_of_rows(rows):
    inputs = keras.Input((2, 2, 1))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(rows).integers(1, 256, (rows, 2, 2, 1), dtype=np.uint8)
    expected = keras.ops.convert_to_numpy(model(x.astype("float32")))
    probabilities = predict_proba(model, x, batch_size=4)
    assert probabilities.shape == (rows, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6)


def test_compiled_classifier_creates_no_variable_in_its_first_training_step():
    # TensorFlow traces a train step twice when the step creates variables: the optimizer
    # is built by compile_classifier, so the first step only updates them.
    inputs = keras.Input((4, 4, 1))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    compile_classifier(model, xray_run(), num_classes=2, learning_rate=0.01)
    before = [v.path for v in model.optimizer.variables]
    assert len(before) > 2 * len(model.trainable_variables)  # a momentum and a velocity each
    model.train_on_batch(np.ones((2, 4, 4, 1), "float32"), np.array([0.0, 1.0]))
    assert [v.path for v in model.optimizer.variables] == before


def test_sparse_categorical_auc_matches_sklearn_one_vs_rest_macro():
    rng = np.random.default_rng(0)
    y = np.arange(200) % 4
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    metric = SparseCategoricalAUC(4, num_thresholds=1000)
    metric.update_state(y, p.astype("float32"))
    expected = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert float(metric.result()) == pytest.approx(expected, abs=0.01)
    restored = SparseCategoricalAUC.from_config(metric.get_config())
    assert restored.num_classes == 4 and restored.name == "auc"


def test_class_weights():
    y = np.array([0, 0, 0, 1, 2, 2])
    classes = ["a", "b", "c"]
    balanced = class_weights_for(xray_run(class_weights="balanced"), classes, y)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose([balanced[i] for i in range(3)], expected)
    named = class_weights_for(xray_run(class_weights={"b": 3.0}), classes, y)
    assert named == {0: 1.0, 1: 3.0, 2: 1.0}
    assert class_weights_for(xray_run(), classes, y) == {0: 1.0, 1: 1.0, 2: 1.0}
    with pytest.raises(ValueError, match=r"no training images of class\(es\) \['c'\]"):
        class_weights_for(xray_run(class_weights="balanced"), classes, np.array([0, 1]))


def test_early_stopping_replays_the_epochs_before_a_resume():
    stopping = ResumableEarlyStopping([0.5, 0.7, 0.6], monitor="val_auc", mode="max", patience=3)
    stopping.on_train_begin()
    assert stopping.best == 0.7 and stopping.wait == 1  # one epoch without improvement so far
