"""Classify one new image with a trained model, preprocessed exactly like the training data.

`predict_image` reads the model's preprocessing.json and calls the augment stage's
`load_image`, the single definition of preprocessing, so a new image gets the same
channels, size and aspect handling as the arrays the model was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.keras"
PREPROCESSING_FILE = "preprocessing.json"
PREPROCESSING_KEYS = ("classes", "image_size", "channels", "aspect")


class PredictError(ValueError):
    """The model folder, its preprocessing.json or the image cannot be used."""


def display_name(label: str) -> str:
    """Human-readable class name, British spelling as in the thesis.

    "NORMAL" -> "normal", "PNEUMONIA" -> "pneumonia", "glioma_tumor" -> "glioma tumour",
    "no_tumor" -> "no tumour".
    """
    words = label.replace("_", " ").lower().split()
    return " ".join("tumour" if word == "tumor" else word for word in words)


def format_prediction(ranked: list[tuple[str, float]], actual: str | None = None) -> str:
    """Thesis-style caption of the top prediction, e.g.
    "99.13 % probability: pituitary tumour\nactual: pituitary tumour".

    Args:
        ranked: [(class name, probability), ...] most probable first (as `predict_image`
            returns); only the first entry is shown.
        actual: the true class when known; adds the second line.
    """
    if not ranked:
        raise PredictError("format_prediction needs at least one (class, probability) pair")
    label, probability = ranked[0]
    if not 0.0 <= probability <= 1.0:
        raise PredictError(f"probability of {label!r} must be in [0, 1], got {probability}")
    caption = f"{probability * 100:.2f} % probability: {display_name(label)}"
    if actual is not None:
        caption += f"\nactual: {display_name(actual)}"
    return caption


def _model_and_preprocessing_paths(model_path: Path) -> tuple[Path, Path]:
    model_path = Path(model_path)
    if model_path.is_dir():
        model_file = model_path / MODEL_FILE
    elif model_path.suffix == ".keras":
        model_file = model_path
    else:
        raise PredictError(
            f"{model_path}: expected a models/<run>/seed-<k> folder or a .keras file"
        )
    preprocessing_file = model_file.parent / PREPROCESSING_FILE
    for required in (model_file, preprocessing_file):
        if not required.is_file():
            raise PredictError(f"{required}: not found (written by the train stage)")
    return model_file, preprocessing_file


def read_preprocessing(path: Path) -> dict[str, Any]:
    """Read a preprocessing.json and check it has every key `load_image` needs."""
    try:
        preprocessing = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise PredictError(f"{path}: not valid JSON: {err}") from None
    missing = [key for key in PREPROCESSING_KEYS if key not in preprocessing]
    if missing:
        raise PredictError(f"{path}: missing keys {missing}; expected {list(PREPROCESSING_KEYS)}")
    return preprocessing


def predict_image(model_path: Path, image_path: Path) -> list[tuple[str, float]]:
    """Class probabilities of one image, most probable first.

    Args:
        model_path: a models/<run>/seed-<k> folder, or a .keras file with its
            preprocessing.json beside it.
        image_path: any image file Pillow reads.

    Returns:
        [(class name, probability), ...] for every class, sorted by probability, highest first.
    """
    # Imported here so that `display_name`/`format_prediction` (used by figures) do
    # not load Keras.
    from medimg.data.prepare import load_image
    from medimg.training.predict import load_model, predict_proba

    model_file, preprocessing_file = _model_and_preprocessing_paths(model_path)
    preprocessing = read_preprocessing(preprocessing_file)
    image_path = Path(image_path)
    if not image_path.is_file():
        raise PredictError(f"{image_path}: image not found")
    pixels = load_image(
        image_path,
        channels=preprocessing["channels"],
        image_size=preprocessing["image_size"],
        aspect=preprocessing["aspect"],
    )
    model = load_model(model_file)
    proba = predict_proba(model, np.asarray(pixels, dtype=np.uint8)[None], batch_size=1)[0]
    classes = list(preprocessing["classes"])
    if len(proba) != len(classes):
        raise PredictError(
            f"{model_file} outputs {len(proba)} probabilities but {preprocessing_file} "
            f"lists {len(classes)} classes {classes}"
        )
    ranked = sorted(zip(classes, proba.tolist(), strict=True), key=lambda pair: -pair[1])
    return [(name, float(p)) for name, p in ranked]
