"""The trained model as an MLflow pyfunc: images in, class probabilities out, over HTTP.

`mlflow models serve -m models:/<name>@<alias>` then answers POST /invocations with the
same probabilities as `medimg predict`, because both preprocess with `load_image` and the
preprocessing.json logged beside the model.

Request: a DataFrame with one string column "image", each value the base64 of an image
file's bytes (JPEG, PNG of 8 or 16 bits, DICOM, ... anything `medimg predict` reads), e.g.
{"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ["<base64>"]]}}.
Why base64 file bytes rather than pixel arrays: the client sends what it has (a file),
and decoding, bit depth and resizing stay on the server, defined once.
Response: one row per image, columns "predicted_class", "probability" (of that class)
and "probability_<class>" for every class.
A request with an unusable image fails as a whole (HTTP 400) naming its row and reason.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import io
import json
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from PIL import Image

from medimg.inference.classifier import MODEL_FILE, PREPROCESSING_FILE, ImageClassifier
from medimg.inference.errors import PredictError
from medimg.inference.results import probability_column

IMAGE_COLUMN = "image"
# Artifact keys of the logged model; MLflow stores them as artifacts/<file name>.
MODEL_ARTIFACT = "model"
PREPROCESSING_ARTIFACT = "preprocessing"
# The packages the served model imports, beyond what tracking records for every run.
_SERVING_DISTRIBUTIONS = ("pandas", "pillow", "pydicom")


class KerasImageClassifier(mlflow.pyfunc.PythonModel):
    """Base64 image files in a DataFrame -> predicted class and class probabilities."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.classifier = ImageClassifier.from_files(
            Path(context.artifacts[MODEL_ARTIFACT]),
            Path(context.artifacts[PREPROCESSING_ARTIFACT]),
        )

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict | None = None,
    ) -> pd.DataFrame:
        """model_input: column "image" of base64 strings -> one output row per image."""
        if IMAGE_COLUMN not in model_input.columns:
            raise _bad_request(
                f"the request has columns {list(model_input.columns)}; expected a column "
                f"{IMAGE_COLUMN!r} of base64-encoded image files"
            )
        pixels = np.stack(
            [self._pixels(row, text) for row, text in enumerate(model_input[IMAGE_COLUMN].tolist())]
        )
        return prediction_frame(self.classifier.predict_pixels(pixels), self.classifier.classes)

    def _pixels(self, row: int, text: object) -> np.ndarray:
        """Model input of one base64 image file, through the same load_image as predict."""
        try:
            data = base64.b64decode(str(text), validate=True)
        except binascii.Error as err:
            raise _bad_request(f"row {row}: {IMAGE_COLUMN!r} is not valid base64 ({err})") from None
        with tempfile.TemporaryDirectory() as tmp:
            # load_image reads files (and tells DICOM by its header, whatever the name).
            path = Path(tmp) / f"row-{row}"
            path.write_bytes(data)
            try:
                return self.classifier.load_pixels(path)
            except PredictError as err:
                reason = str(err).removeprefix(f"{path}: ")
                raise _bad_request(f"row {row}: {reason}") from None


def _bad_request(message: str) -> Exception:
    # MlflowException with INVALID_PARAMETER_VALUE: the scoring server answers HTTP 400.
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def prediction_frame(proba: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """(N, n_classes) probabilities -> predicted_class, probability, probability_<class>..."""
    best = np.argmax(proba, axis=1)
    frame = pd.DataFrame(
        {
            "predicted_class": [classes[i] for i in best],
            "probability": proba[np.arange(len(proba)), best].astype(np.float64),
        }
    )
    for i, label in enumerate(classes):
        frame[probability_column(label)] = proba[:, i].astype(np.float64)
    return frame


def encode_image(pixels: np.ndarray) -> str:
    """uint8 (H, W, C) pixels as the base64 of a PNG file: a request value for "image"."""
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pip_requirements() -> list[str]:
    from medimg.tracking import runs

    versions = dict(runs.package_versions())
    for distribution in _SERVING_DISTRIBUTIONS:
        versions[distribution] = importlib.metadata.version(distribution)
    return [f"{name}=={version}" for name, version in versions.items()]


def log_classifier_model(model_file: Path, preprocessing: dict, input_example: np.ndarray) -> str:
    """Log model.keras + preprocessing as a pyfunc to the ACTIVE run ("model"); return its id.

    model_file: a saved Keras model (any file name; logged as model.keras).
    preprocessing: the contents of preprocessing.json (classes, image_size, channels, aspect).
    input_example: a few images as the model takes them, uint8 (n, H, W, C); they are
        sent as PNG files and become the logged model's serving example, which MLflow
        answers with the logged model (loaded through this wrapper) while logging.
    The signature's output side is the response's layout (its columns and types), made
    from placeholder probabilities: asking the model here as well would load and run it
    a second time (seconds for EfficientNetB0 on this CPU).
    The requirements are listed explicitly (as for every run): inferring them would load
    the model in a subprocess. The server also needs medimg installed (the wrapper and
    load_image are medimg code): serve with `--env-manager local` in its environment.
    """
    from mlflow.models import infer_signature

    classes = list(preprocessing["classes"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copyfile(model_file, folder / MODEL_FILE)
        (folder / PREPROCESSING_FILE).write_text(json.dumps(preprocessing, indent=2) + "\n")
        example = pd.DataFrame({IMAGE_COLUMN: [encode_image(image) for image in input_example]})
        uniform = np.full((len(example), len(classes)), 1 / len(classes), np.float32)
        output = prediction_frame(uniform, classes)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={
                MODEL_ARTIFACT: str(folder / MODEL_FILE),
                PREPROCESSING_ARTIFACT: str(folder / PREPROCESSING_FILE),
            },
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=_pip_requirements(),
        )
    return info.model_id
