"""`medimg predict`'s work: resolve the model, load it once, classify every input in batches.

One bad input never stops the others: it becomes a result with its reason, and the
caller decides the exit status from the results.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from medimg.inference import DEFAULT_BATCH_SIZE
from medimg.inference.captions import format_prediction
from medimg.inference.classifier import Batch, ImageClassifier, ImageResult
from medimg.inference.errors import PredictError
from medimg.inference.inputs import collect_inputs
from medimg.inference.sources import resolve_model_source

if TYPE_CHECKING:
    from medimg.inference.gradcam import GradCam


@dataclass(frozen=True)
class PredictionRun:
    """The classifier used and one result per input, in the order the inputs were given."""

    classifier: ImageClassifier
    results: list[ImageResult]

    def count(self, status: str) -> int:
        return sum(result.status == status for result in self.results)


def predict_inputs(
    model: str,
    inputs: Sequence[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
    min_size: int | None = None,
    explain_dir: Path | None = None,
    explain_layer: str | None = None,
    download_dir: Path | None = None,
) -> PredictionRun:
    """Classify image files, folders and glob patterns `inputs` with the model `model`.

    model: anything `resolve_model_source` takes (folder, runs:/..., models:/...).
    min_size: the shortest image side accepted, in pixels (None: the classifier's default).
    explain_dir: when given, a Grad-CAM overlay PNG per classified image is written there
        (created if needed), on the layer `explain_layer` (None: found automatically).
    download_dir: where an MLflow model is downloaded (see `resolve_model_source`).
    Raises PredictError (or ModelSourceError) for a problem with the model or an option,
    before any image is read; a problem with an image is its result instead.
    """
    if min_size is not None and min_size < 1:
        raise PredictError(f"the minimum image size must be at least 1 px, got {min_size}")
    if batch_size < 1:
        raise PredictError(f"the batch size must be at least 1, got {batch_size}")
    classifier = ImageClassifier.from_folder(resolve_model_source(model, download_dir))
    explainer = None
    if explain_dir is not None:
        from medimg.inference.gradcam import GradCam

        explainer = GradCam(classifier.model, explain_layer)
        _make_folder(explain_dir)
    entries = collect_inputs(inputs)
    paths = [entry for entry in entries if isinstance(entry, Path)]
    classified: list[ImageResult] = []
    used_names: set[str] = set()
    with tqdm(total=len(paths), desc="predict", unit="img", file=sys.stderr, disable=None) as bar:
        for batch in classifier.iter_batches(paths, batch_size, min_size):
            if explainer is not None and len(batch.pixels):
                batch = _explain(batch, explainer, explain_dir, used_names)
            classified.extend(batch.results)
            bar.update(len(batch.results))
    in_order = iter(classified)
    results = [next(in_order) if isinstance(entry, Path) else entry for entry in entries]
    return PredictionRun(classifier, results)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PredictError(f"Grad-CAM folder {folder}: cannot create it ({err})") from None


def _explain(batch: Batch, explainer: GradCam, folder: Path, used_names: set[str]) -> Batch:
    """Write a Grad-CAM overlay per classified image of `batch`; note it in its result."""
    import numpy as np

    from medimg.inference.overlay import write_overlay

    predicted = np.argmax(batch.proba, axis=1)
    heat_maps = explainer.heat_maps(batch.pixels, predicted)
    ok_rows = iter(range(len(batch.pixels)))
    results = []
    for result in batch.results:
        if result.status == "ok":
            row = next(ok_rows)
            path = folder / _overlay_name(Path(result.path), used_names)
            caption = f"{format_prediction(result.ranked)}\nGrad-CAM on {explainer.layer_name}"
            write_overlay(path, batch.pixels[row], heat_maps[row], caption)
            result = replace(result, explanation=str(path))
        results.append(result)
    return replace(batch, results=results)


def _overlay_name(image: Path, used_names: set[str]) -> str:
    """<image stem>.png; a second image of the same name (another folder) gets -2, -3..."""
    name, number = f"{image.stem}.png", 1
    while name in used_names:
        number += 1
        name = f"{image.stem}-{number}.png"
    used_names.add(name)
    return name


def predict_image(model_path: Path, image_path: Path) -> list[tuple[str, float]]:
    """Class probabilities of one image, most probable first: the simplest use of a
    trained model from Python (`predict_inputs` does many images in batches).

    Args:
        model_path: a models/<run>/seed-<k> folder or its model.keras (or any source
            `medimg.inference.sources.resolve_model_source` takes).
        image_path: an image file `medimg predict` reads.

    Returns:
        [(class name, probability), ...] for every class, sorted by probability, highest first.
    Raises PredictError naming the model, its preprocessing.json or the image at fault.
    """
    classifier = ImageClassifier.from_folder(resolve_model_source(str(model_path)))
    image_path = Path(image_path)
    if not image_path.is_file():
        raise PredictError(f"{image_path}: image not found")
    pixels = classifier.load_pixels(image_path)
    proba = classifier.predict_pixels(pixels[None])[0]
    ranked = sorted(zip(classifier.classes, proba.tolist(), strict=True), key=lambda p: -p[1])
    return [(name, float(p)) for name, p in ranked]
