"""A trained model loaded once, classifying image files in batches with its own preprocessing.

A model folder holds model.keras and preprocessing.json (what the train stage writes).
Every image goes through `medimg.data.preprocess.load_image` with the settings in
preprocessing.json, the one definition of preprocessing, so a new image becomes exactly
what the training arrays were made of. A file that cannot be used becomes a result
with its reason; the other images in its batch are still classified.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medimg.config.base import error_lines
from medimg.inference import DEFAULT_BATCH_SIZE, DEFAULT_MIN_SIZE
from medimg.inference.errors import ModelSourceError, PredictError

if TYPE_CHECKING:
    import keras

MODEL_FILE = "model.keras"
PREPROCESSING_FILE = "preprocessing.json"

Status = Literal["ok", "error", "skipped"]


class Preprocessing(BaseModel):
    """preprocessing.json: what `load_image` needs, and the class names in output order."""

    # Other keys (e.g. "input", a description for people) are kept, not refused.
    model_config = ConfigDict(extra="allow", frozen=True)

    classes: list[str] = Field(min_length=2)
    image_size: int = Field(ge=1)
    channels: Literal[1, 3]
    aspect: Literal["stretch", "pad"]
    # models trained before grey-level normalisation existed have no such key
    normalize: Literal["none", "equalize"] = "none"
    crop: Literal["none", "content"] = "none"


def read_preprocessing(path: Path) -> Preprocessing:
    """Read and check a preprocessing.json; one-line PredictError naming the bad key."""
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as err:
        raise PredictError(f"{path}: cannot read ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise PredictError(f"{path}: not valid JSON: {err}") from None
    try:
        return Preprocessing.model_validate(raw)
    except ValidationError as err:
        raise PredictError(f"{path}: {'; '.join(error_lines(err, ''))}") from None


@dataclass(frozen=True)
class ImageResult:
    """The outcome for one input: class probabilities, or why there are none."""

    path: str
    status: Status
    # class name -> probability, in the model's class order; only when status is "ok".
    probabilities: dict[str, float] = field(default_factory=dict)
    message: str = ""  # the reason for "error" and "skipped"
    explanation: str = ""  # the Grad-CAM PNG written for this image, if any

    @property
    def ranked(self) -> list[tuple[str, float]]:
        """[(class, probability), ...] most probable first (ties: the model's class order)."""
        return sorted(self.probabilities.items(), key=lambda pair: -pair[1])


@dataclass(frozen=True)
class Batch:
    """Results of a batch in input order, and the model input of its usable images.

    pixels: uint8 (n_ok, H, W, C), one row per result with status "ok", in order;
    proba: float32 (n_ok, n_classes), the same rows.
    """

    results: list[ImageResult]
    pixels: np.ndarray
    proba: np.ndarray


def model_files(folder: Path) -> tuple[Path, Path]:
    """(model.keras, preprocessing.json) of a model folder; ModelSourceError names a missing one."""
    model_file, preprocessing_file = folder / MODEL_FILE, folder / PREPROCESSING_FILE
    for required in (model_file, preprocessing_file):
        if not required.is_file():
            raise ModelSourceError(
                f"{required}: not found; a model folder holds {MODEL_FILE} and "
                f"{PREPROCESSING_FILE} (written by the train stage)"
            )
    return model_file, preprocessing_file


class ImageClassifier:
    """A Keras model and its preprocessing; classifies image files in batches.

    model: takes uint8-range pixels (batch, image_size, image_size, channels) and outputs
    one sigmoid unit (two classes) or one softmax unit per class.
    """

    def __init__(self, model: keras.Model, preprocessing: Preprocessing, name: str) -> None:
        self.model = model
        self.preprocessing = preprocessing
        self.name = name
        self._check_shapes()

    @classmethod
    def from_files(cls, model_file: Path, preprocessing_file: Path) -> ImageClassifier:
        """Load model.keras (without compile state) and its preprocessing.json."""
        from medimg.models.saved import ModelFileError, load_model

        preprocessing = read_preprocessing(preprocessing_file)
        try:
            model = load_model(model_file)
        # Missing, damaged, foreign or hostile: one line naming the file either way.
        except (FileNotFoundError, ModelFileError) as err:
            raise PredictError(str(err)) from None
        return cls(model, preprocessing, name=str(model_file.parent))

    @classmethod
    def from_folder(cls, folder: Path) -> ImageClassifier:
        """Load the model folder written by the train stage (or resolved from MLflow)."""
        return cls.from_files(*model_files(Path(folder)))

    @property
    def classes(self) -> list[str]:
        return list(self.preprocessing.classes)

    def default_min_size(self) -> int:
        """DEFAULT_MIN_SIZE, or the model's input size when that is smaller: a model trained
        on 16 px images accepts 16 px images."""
        return min(DEFAULT_MIN_SIZE, self.preprocessing.image_size)

    def _check_shapes(self) -> None:
        p = self.preprocessing
        expected = (p.image_size, p.image_size, p.channels)
        model_input = tuple(self.model.input_shape[1:])
        if any(m is not None and m != e for m, e in zip(model_input, expected, strict=True)):
            raise PredictError(
                f"{self.name}: the model takes images of shape {model_input} but "
                f"{PREPROCESSING_FILE} makes {expected} (image_size, channels)"
            )
        units = self.model.output_shape[-1]
        if units != len(p.classes) and not (units == 1 and len(p.classes) == 2):
            raise PredictError(
                f"{self.name}: the model outputs {units} probabilities but "
                f"{PREPROCESSING_FILE} lists {len(p.classes)} classes {p.classes}"
            )

    def load_pixels(self, path: Path, min_size: int | None = None) -> np.ndarray:
        """Model input of one image file, uint8 (image_size, image_size, channels).

        Raises PredictError naming the file when it cannot be read or its shorter side is
        below `min_size` pixels (None: `default_min_size()`).
        """
        from medimg.data.pixels import UnsupportedImageError, image_dimensions
        from medimg.data.preprocess import ImageLoadError, load_image

        min_size = self.default_min_size() if min_size is None else min_size
        try:
            width, height = image_dimensions(path)
        except UnsupportedImageError as err:  # names the file already
            raise PredictError(str(err)) from None
        # What Pillow's header read raises for a file that is not an image (see load_image).
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise PredictError(f"{path}: cannot read the image ({err})") from None
        if min(width, height) < min_size:
            raise PredictError(
                f"{path}: image is {width} x {height} px; the shorter side must be at "
                f"least {min_size} px"
            )
        p = self.preprocessing
        try:
            return load_image(path, p.channels, p.image_size, p.aspect, p.normalize, p.crop)
        except ImageLoadError as err:  # names the file already
            raise PredictError(str(err)) from None

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> (N, n_classes) float32 class probabilities."""
        from medimg.inference.probabilities import predict_proba

        return predict_proba(self.model, pixels, batch_size=max(1, len(pixels)))

    def iter_batches(
        self,
        paths: Sequence[Path],
        batch_size: int = DEFAULT_BATCH_SIZE,
        min_size: int | None = None,
    ) -> Iterator[Batch]:
        """Decode and classify `paths` `batch_size` at a time, in order."""
        if batch_size < 1:
            raise PredictError(f"batch size must be at least 1, got {batch_size}")
        for start in range(0, len(paths), batch_size):
            yield self._classify_batch(paths[start : start + batch_size], min_size)

    def _classify_batch(self, paths: Sequence[Path], min_size: int | None) -> Batch:
        results: list[ImageResult] = []
        pixels: list[np.ndarray] = []
        for path in paths:
            try:
                pixels.append(self.load_pixels(path, min_size))
                results.append(ImageResult(str(path), "ok"))
            except PredictError as err:
                # The message starts with the path, which the result holds already.
                reason = str(err).removeprefix(f"{path}: ")
                results.append(ImageResult(str(path), "error", message=reason))
        p = self.preprocessing
        x = (
            np.stack(pixels)
            if pixels
            else np.zeros((0, p.image_size, p.image_size, p.channels), np.uint8)
        )
        proba = self.predict_pixels(x)
        rows = iter(proba)
        classes = self.classes
        results = [
            result
            if result.status != "ok"
            else ImageResult(
                result.path,
                "ok",
                probabilities={c: float(v) for c, v in zip(classes, next(rows), strict=True)},
            )
            for result in results
        ]
        return Batch(results, x, proba)
