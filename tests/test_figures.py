"""Figures: real PNGs of the expected pixel size, and the thesis-style captions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medimg.evaluation import figures
from medimg.evaluation.metrics import classification_metrics, pr_points, roc_points
from medimg.inference.captions import display_name, format_prediction
from medimg.inference.errors import PredictError

MRI = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def inches_to_pixels(size_in: tuple[float, float]) -> tuple[int, int]:
    return round(size_in[0] * figures.DPI), round(size_in[1] * figures.DPI)


def mri_predictions(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % len(MRI)
    logits = rng.normal(size=(n, len(MRI)))
    logits[np.arange(n), y] += 2.0  # better than chance, not perfect
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("NORMAL", "normal"),
        ("PNEUMONIA", "pneumonia"),
        ("glioma_tumor", "glioma tumour"),
        ("no_tumor", "no tumour"),
        ("pituitary_tumor", "pituitary tumour"),
    ],
)
def test_display_name(label, expected):
    assert display_name(label) == expected


def test_format_prediction_like_the_thesis():
    ranked = [("pituitary_tumor", 0.9913), ("glioma_tumor", 0.0087)]
    caption = format_prediction(ranked, actual="pituitary_tumor")
    assert caption == "99.13 % probability: pituitary tumour\nactual: pituitary tumour"
    assert format_prediction([("NORMAL", 0.5), ("PNEUMONIA", 0.5)]) == "50.00 % probability: normal"
    with pytest.raises(PredictError, match="probability"):
        format_prediction([("NORMAL", 1.5)])


def test_confusion_matrix_png(tmp_path):
    y, proba = mri_predictions()
    counts = np.array(classification_metrics(y, proba, MRI)["confusion_matrix"])
    path = figures.save_confusion_matrix(counts, MRI, tmp_path / "cm.png", title="test")
    assert png_size(path) == inches_to_pixels(figures.CONFUSION_SIZE_IN)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    with pytest.raises(ValueError, match="shape"):
        figures.save_confusion_matrix(counts[:2], MRI, tmp_path / "bad.png")


@pytest.mark.parametrize("binary", [True, False])
def test_roc_and_pr_pngs(tmp_path, binary):
    y, proba = mri_predictions()
    classes = MRI
    if binary:
        classes = ["NORMAL", "PNEUMONIA"]
        y = y % 2
        proba = np.stack([1 - proba[:, 1], proba[:, 1]], axis=1)
    m = classification_metrics(y, proba, classes)
    roc = figures.save_roc_curves(roc_points(y, proba, classes), m, tmp_path / "roc.png")
    pr = figures.save_pr_curves(pr_points(y, proba, classes), m, tmp_path / "pr.png")
    for path in (roc, pr):
        assert png_size(path) == inches_to_pixels(figures.CURVE_SIZE_IN)


def test_training_curves_png_one_panel_per_metric(tmp_path):
    histories = {
        seed: pd.DataFrame(
            {
                "epoch": [1, 2, 3],
                "loss": [0.9, 0.6, 0.4],
                "accuracy": [0.5, 0.7, 0.8],
                "auc": [0.6, 0.8, 0.9],
                "val_loss": [1.0, 0.8, 0.7],
                "val_accuracy": [0.5, 0.6, 0.7],
                "val_auc": [0.6, 0.7, 0.8],
            }
        )
        for seed in (0, 1)
    }
    path = figures.save_training_curves(histories, tmp_path / "curves.png")
    width, height = figures.TRAINING_PANEL_SIZE_IN
    assert png_size(path) == inches_to_pixels((3 * width, height))
    only_loss = {0: histories[0][["epoch", "loss", "val_loss"]]}
    path = figures.save_training_curves(only_loss, tmp_path / "loss.png")
    assert png_size(path) == inches_to_pixels((width, height))
    with pytest.raises(ValueError, match="epoch"):
        figures.save_training_curves({0: histories[0].drop(columns="epoch")}, tmp_path / "x.png")


def test_prediction_grid_colours_right_green_and_wrong_red(tmp_path):
    # Two uniform grey images: the first predicted right, the second wrong.
    images = np.full((2, 16, 16, 1), 128, dtype=np.uint8)
    y = np.array([0, 1])
    proba = np.array([[0.9, 0.1], [0.8, 0.2]])
    path = figures.save_prediction_grid(
        images, y, proba, ["NORMAL", "PNEUMONIA"], tmp_path / "grid.png", columns=4
    )
    width, height = figures.PREDICTION_TILE_SIZE_IN
    assert png_size(path) == inches_to_pixels((2 * width, height))
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    half = pixels.shape[1] // 2
    greenish = (green - red > 60) & (green - blue > 60)
    reddish = (red - green > 60) & (red - blue > 60)
    assert greenish[:, :half].sum() > 20 and greenish[:, half:].sum() == 0
    assert reddish[:, half:].sum() > 20 and reddish[:, :half].sum() == 0


def test_prediction_grid_rejects_float_images(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        figures.save_prediction_grid(
            np.zeros((1, 8, 8, 3)),
            np.array([0]),
            np.array([[1.0, 0.0]]),
            ["a", "b"],
            tmp_path / "x.png",
        )
