"""The research options: learning-rate schedules, label smoothing, intensity handling,
the decision threshold chosen on validation, and the ensemble of the repeats."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from PIL import Image

from medimg.config.runs import LearningRateScheduleConfig, RunConfig
from medimg.data.intensity import normalize_image, random_intensity
from medimg.data.prepared import load_prepared
from medimg.evaluation.metrics import classification_metrics, youden_threshold
from medimg.evaluation.predictions import SplitPredictions
from medimg.evaluation.seed_evaluation import ensemble, evaluate_predictions
from medimg.training.checkpoints import ResumableReduceLROnPlateau
from medimg.training.fit import fit_one_seed, smoothed_sparse_categorical_crossentropy
from test_fit import write_prepared


def _run(**overrides) -> RunConfig:
    return RunConfig(
        **{
            "dataset": "chest_xray",
            "split_protocol": "official",
            "model": "xray_cnn",
            "model_options": {"feature_maps": 2, "dense_units": [4]},
            "epochs": 4,
            "batch_size": 4,
            **overrides,
        }
    )


# ------------------------------------------------------------------ schedules


@pytest.mark.slow
def test_cosine_schedule_decays_over_the_phase_to_min_lr(tmp_path):
    write_prepared(tmp_path / "chest_xray", ["NORMAL", "PNEUMONIA"], n=16, size=16)
    data = load_prepared(tmp_path / "chest_xray")
    schedule = LearningRateScheduleConfig(kind="cosine", min_lr=1e-4)
    result = fit_one_seed(
        _run(learning_rate=0.01, lr_schedule=schedule), data, tmp_path / "w", seed=0, verbose=0
    )
    steps_per_epoch, total = 4, 16  # 16 images, batch 4, 4 epochs
    # the rate recorded at each epoch's end: the cosine at that step, from 0.01 to 1e-4
    expected = [
        1e-4 + (0.01 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (e + 1) * steps_per_epoch / total))
        for e in range(4)
    ]
    np.testing.assert_allclose(result.history["learning_rate"], expected, rtol=1e-4)


def test_plateau_schedule_replays_its_patience_after_a_resume():
    reduce = ResumableReduceLROnPlateau(
        [0.6, 0.7, 0.69, 0.68], monitor="val_auc", mode="max", patience=3, factor=0.5
    )
    reduce.on_train_begin()
    assert reduce.best == 0.7 and reduce.wait == 2  # two epochs without improvement so far
    already_reduced = ResumableReduceLROnPlateau(
        [0.7, 0.6, 0.6, 0.6], monitor="val_auc", mode="max", patience=3
    )
    already_reduced.on_train_begin()
    assert already_reduced.wait == 0  # the reduction happened before the resume


def test_label_smoothing_matches_hand_arithmetic():
    # 3 classes, smoothing 0.3: targets (0.1, 0.8, 0.1) for class 1
    p = np.array([[0.2, 0.5, 0.3]], dtype="float32")
    loss = smoothed_sparse_categorical_crossentropy(np.array([1]), p, label_smoothing=0.3)
    expected = -(0.1 * math.log(0.2) + 0.8 * math.log(0.5) + 0.1 * math.log(0.3))
    assert float(keras.ops.convert_to_numpy(loss)[0]) == pytest.approx(expected, rel=1e-5)
    plain = smoothed_sparse_categorical_crossentropy(np.array([1]), p)
    assert float(keras.ops.convert_to_numpy(plain)[0]) == pytest.approx(-math.log(0.5), rel=1e-5)


@pytest.mark.slow
def test_label_smoothing_trains_both_binary_and_multiclass(tmp_path):
    for classes in (["NORMAL", "PNEUMONIA"], ["a", "b", "c"]):
        folder = tmp_path / f"d{len(classes)}"
        write_prepared(folder, classes, n=12, size=16)
        model = "xray_cnn" if len(classes) == 2 else "mri_cnn"
        options = (
            {"feature_maps": 2, "dense_units": [4]}
            if model == "xray_cnn"
            else {"filters": [2], "dense_units": 4}
        )
        run = _run(model=model, model_options=options, epochs=1, label_smoothing=0.1)
        result = fit_one_seed(
            run, load_prepared(folder), tmp_path / f"w{len(classes)}", 0, verbose=0
        )
        assert math.isfinite(result.history["loss"][0])


# ------------------------------------------------------------------ intensity


def test_random_intensity_is_seeded_bounded_and_off_when_zero():
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    a = random_intensity(images, np.random.default_rng(1), 0.2, 0.3, 0.4)
    b = random_intensity(images, np.random.default_rng(1), 0.2, 0.3, 0.4)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == images.shape
    assert not np.array_equal(a, images)
    np.testing.assert_array_equal(
        random_intensity(images, np.random.default_rng(1), 0, 0, 0), images
    )
    with pytest.raises(ValueError, match="brightness"):
        random_intensity(images, np.random.default_rng(1), 1.5, 0, 0)


def test_brightness_alone_shifts_every_pixel_of_an_image_by_one_amount():
    images = np.full((2, 4, 4, 1), 100, dtype=np.uint8)
    shifted = random_intensity(images, np.random.default_rng(3), 0.1, 0, 0).astype(int)
    for image in shifted:
        assert len(np.unique(image)) == 1 and abs(int(image[0, 0, 0]) - 100) <= 26


def test_equalize_uses_the_full_range():
    ramp = np.tile(np.linspace(80, 160, 64).astype(np.uint8), (64, 1))
    image = Image.fromarray(ramp, "L")
    equalized = np.asarray(normalize_image(image, "equalize"))
    assert equalized.max() == 255 and equalized.min() < 10
    assert normalize_image(image, "none") is image
    rgb = Image.fromarray(np.stack([ramp] * 3, axis=-1), "RGB")
    assert np.asarray(normalize_image(rgb, "equalize")).shape == (64, 64, 3)


# ------------------------------------------------------------------ threshold and ensemble


def test_youden_threshold_against_hand_arithmetic():
    y = np.array([0, 0, 0, 1, 1, 1])
    score = np.array([0.1, 0.4, 0.7, 0.6, 0.8, 0.9])
    # thresholds: 0.8 -> J = 2/3 - 0; 0.6 -> J = 1 - 1/3 = 2/3 (tpr 1, fpr 1/3);
    # 0.9 -> 1/3; first of the equal best on the curve (highest): 0.8
    assert youden_threshold(y, score) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="single class"):
        youden_threshold(np.zeros(3), np.array([0.1, 0.2, 0.3]))


def test_threshold_changes_the_calls_not_the_auc():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.2, 0.45, 0.4, 0.9])
    proba = np.stack([1 - p1, p1], axis=1)
    default = classification_metrics(y, proba, ["n", "p"])
    low = classification_metrics(y, proba, ["n", "p"], threshold=0.4)
    assert default["accuracy"] == 0.75 and default["threshold"] == 0.5
    assert low["accuracy"] == 0.75 and low["recall"] == 1.0 and low["specificity"] == 0.5
    assert low["roc_auc"] == default["roc_auc"]


def test_the_threshold_is_chosen_on_validation_only():
    val_p = np.array([0.1, 0.2, 0.3, 0.35])  # val: class 1 from 0.3 up
    test_p = np.array([0.25, 0.32, 0.9, 0.95])
    predictions = SplitPredictions(
        y={"val": np.array([0, 0, 1, 1]), "test": np.array([0, 1, 1, 1])},
        proba={"val": np.stack([1 - val_p, val_p], 1), "test": np.stack([1 - test_p, test_p], 1)},
    )
    metrics = evaluate_predictions(predictions, ["n", "p"], "youden_val")
    assert metrics["val"]["threshold"] == metrics["test"]["threshold"] == pytest.approx(0.3)
    assert metrics["val"]["accuracy"] == 1.0
    assert metrics["test"]["accuracy"] == 1.0  # 0.32 >= 0.3: called positive
    argmax = evaluate_predictions(predictions, ["n", "p"], "argmax")
    assert argmax["test"]["accuracy"] == 0.75


def test_ensemble_averages_the_members_probabilities():
    def member(p):
        p = np.asarray(p)
        return SplitPredictions(
            y={"val": np.array([0, 1]), "test": np.array([0, 1])},
            proba={"val": np.stack([1 - p, p], 1), "test": np.stack([1 - p, p], 1)},
        )

    combined = ensemble([member([0.2, 0.6]), member([0.4, 0.8])])
    np.testing.assert_allclose(combined.proba["test"][:, 1], [0.3, 0.7])
    with pytest.raises(ValueError, match="at least one"):
        ensemble([])


def test_load_image_normalises_as_configured(tmp_path):
    from medimg.data.preprocess import load_image

    ramp = np.tile(np.linspace(80, 160, 32).astype(np.uint8), (32, 1))
    Image.fromarray(ramp, "L").save(tmp_path / "dim.png")
    plain = load_image(tmp_path / "dim.png", 1, 32, "stretch")
    stretched = load_image(tmp_path / "dim.png", 1, 32, "stretch", "equalize")
    assert plain.max() <= 160 and stretched.max() == 255 and stretched.min() < 10


def test_the_loader_applies_intensity_augmentation_without_geometry():
    from medimg.config.runs import TrainAugmentConfig
    from medimg.training.data import loader_augmentation

    assert loader_augmentation(TrainAugmentConfig(rotation_deg=5), geometric=False) is None
    augment = loader_augmentation(TrainAugmentConfig(brightness=0.2), geometric=False)
    images = np.full((3, 8, 8, 1), 120, dtype=np.uint8)
    out = augment(images, np.random.default_rng(0))
    assert out.shape == images.shape and not np.array_equal(out, images)
    for image in out:  # brightness only: no warp, every pixel moves together
        assert len(np.unique(image)) == 1


def test_content_crop_removes_a_black_border(tmp_path):
    from medimg.data.preprocess import load_image

    framed = np.zeros((40, 40), dtype=np.uint8)
    framed[10:30, 5:35] = np.tile(np.linspace(60, 200, 30).astype(np.uint8), (20, 1))
    Image.fromarray(framed, "L").save(tmp_path / "framed.png")
    whole = load_image(tmp_path / "framed.png", 1, 20, "stretch")
    cropped = load_image(tmp_path / "framed.png", 1, 20, "stretch", crop="content")
    assert (whole[:4] == 0).all()  # the border is there without the crop
    assert cropped.min() >= 50  # and gone with it: only the content, stretched to fill
    blank = Image.new("L", (8, 8))
    from medimg.data.intensity import crop_to_content

    assert crop_to_content(blank, "content").size == (8, 8)  # nothing brighter: kept whole


def test_random_frames_black_out_borders_of_the_chosen_share_of_images():
    from medimg.data.augmentation import random_frames

    images = np.full((400, 20, 30, 1), 200, dtype=np.uint8)
    out = random_frames(images, np.random.default_rng(0), probability=0.5, max_fraction=0.2)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert (images == 200).all()  # the input is left as it was
    black = out == 0
    framed = black.any(axis=(1, 2, 3))
    assert 0.4 < framed.mean() < 0.6  # about half of the 400 images
    # what is black is a border: rows/columns from an edge inward, never beyond 20 %
    for image in out[framed][:, :, :, 0]:
        dark_rows = np.flatnonzero((image == 0).all(axis=1))
        dark_cols = np.flatnonzero((image == 0).all(axis=0))
        top = next((k for k in range(20) if k not in dark_rows), 20)
        bottom = next((k for k in range(20) if 19 - k not in dark_rows), 20)
        left = next((k for k in range(30) if k not in dark_cols), 30)
        right = next((k for k in range(30) if 29 - k not in dark_cols), 30)
        assert top <= 4 and bottom <= 4 and left <= 6 and right <= 6  # 0.2 * 20, 0.2 * 30
        inner = image[top : 20 - bottom, left : 30 - right]
        assert (inner == 200).all()  # inside the frame nothing changed
    assert not black[~framed].any()


def test_random_frames_refuses_out_of_range_settings():
    from medimg.data.augmentation import random_frames

    images = np.zeros((2, 8, 8, 1), dtype=np.uint8)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="probability must be in"):
        random_frames(images, rng, probability=1.5, max_fraction=0.1)
    with pytest.raises(ValueError, match="max_fraction must be in"):
        random_frames(images, rng, probability=0.5, max_fraction=0.6)
    with pytest.raises(ValueError, match="uint8 batch"):
        random_frames(images.astype(np.float32), rng, probability=0.5, max_fraction=0.1)


def test_the_loader_applies_frames_and_params_validate_them():
    from medimg.config.runs import TrainAugmentConfig
    from medimg.training.data import loader_augmentation

    augment = loader_augmentation(
        TrainAugmentConfig(frame_probability=1.0, frame_max_fraction=0.3), geometric=False
    )
    images = np.full((16, 10, 10, 1), 90, dtype=np.uint8)
    out = augment(images, np.random.default_rng(1))
    assert (out == 0).any() and (out[:, 3:7, 3:7] == 90).all()  # borders only, centre kept
    with pytest.raises(ValueError, match="frame_probability"):
        TrainAugmentConfig(frame_probability=2)
