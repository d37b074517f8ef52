"""Classify one image in one call: the simplest use of a trained model from Python.

`medimg predict` and `medimg.inference` do the same for many images in batches, with
MLflow model sources, Grad-CAM and serving.
"""

from __future__ import annotations

from pathlib import Path

from medimg.inference.errors import PredictError


def predict_image(model_path: Path, image_path: Path) -> list[tuple[str, float]]:
    """Class probabilities of one image, most probable first.

    Args:
        model_path: a models/<run>/seed-<k> folder or its model.keras (or any source
            `medimg.inference.sources.resolve_model_source` takes).
        image_path: an image file `medimg predict` reads.

    Returns:
        [(class name, probability), ...] for every class, sorted by probability, highest first.
    Raises PredictError naming the model, its preprocessing.json or the image at fault.
    """
    # Imported here so that `display_name`/`format_prediction` (used by figures) do
    # not load Keras.
    from medimg.inference.classifier import ImageClassifier
    from medimg.inference.sources import resolve_model_source

    classifier = ImageClassifier.from_folder(resolve_model_source(str(model_path)))
    image_path = Path(image_path)
    if not image_path.is_file():
        raise PredictError(f"{image_path}: image not found")
    pixels = classifier.load_pixels(image_path)
    proba = classifier.predict_pixels(pixels[None])[0]
    ranked = sorted(zip(classifier.classes, proba.tolist(), strict=True), key=lambda p: -p[1])
    return [(name, float(p)) for name, p in ranked]
