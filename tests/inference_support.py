"""Small real models and image files for the inference tests (predict, Grad-CAM, serving).

Models follow the model contract: Input "pixels" -> Rescaling "rescale" -> a nested
functional "backbone" whose output is the model's output; `nested=False` builds the
flat layout of earlier versions. A few conv filters at 32 px: built and run in moments.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

SIZE = 32
BINARY = ["NORMAL", "PNEUMONIA"]


def build_model(
    num_classes: int = 2, channels: int = 1, size: int = SIZE, nested: bool = True, seed: int = 0
) -> keras.Model:
    """pixels (batch, size, size, channels) 0-255 -> probabilities; random weights (seeded)."""
    keras.utils.set_random_seed(seed)
    pixels = keras.Input((size, size, channels), name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(pixels)
    if nested:
        features_in = keras.Input((size, size, channels), name="backbone_input")
        features = _features(features_in, num_classes)
        backbone = keras.Model(features_in, features, name="backbone")
        return keras.Model(pixels, backbone(x), name="tiny_nested")
    return keras.Model(pixels, _features(x, num_classes), name="tiny_flat")


def _features(x: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    if num_classes == 2:
        return keras.layers.Dense(1, activation="sigmoid", name="output")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="output")(x)


def save_model_folder(
    folder: Path,
    model: keras.Model,
    classes: list[str],
    channels: int = 1,
    size: int = SIZE,
    aspect: str = "stretch",
) -> Path:
    """A model folder as the train stage writes it: model.keras + preprocessing.json."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    preprocessing = {
        "classes": classes,
        "image_size": size,
        "channels": channels,
        "aspect": aspect,
        "input": "uint8 pixels 0-255, (batch, image_size, image_size, channels)",
    }
    (folder / "preprocessing.json").write_text(json.dumps(preprocessing))
    return folder


# Ways a model file given by a user can be bad (`bad_model_file`).
BAD_MODEL_FILES = ("hostile_model", "hostile_layer", "truncated")


def bad_model_file(good: Path, kind: str, target: Path, marker: Path) -> Path:
    """A copy of the saved model `good` (a .keras file) spoilt as `kind`, written to `target`.

    hostile_model: config.json names `os.system` as the model, with a command that would
    create `marker`; hostile_layer: the same as one of its layers; truncated: the file
    cut to its first 500 bytes.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        target.write_bytes(good.read_bytes()[:500])
        return target
    with zipfile.ZipFile(good) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    hostile = {
        "module": "os",
        "class_name": "system",
        "config": {"command": f"touch {marker}"},
        "registered_name": None,
    }
    if kind == "hostile_model":
        config = hostile
    else:
        config["config"]["layers"][1] = hostile
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def gradient_image(width: int = 48, height: int = 40) -> np.ndarray:
    """uint8 (height, width) with structure in both directions (not a flat image)."""
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 5 + y * 3) % 256).astype(np.uint8)


def write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", **elements):
    """A single-frame DICOM file of unsigned `stored` values (uint8 or uint16), as written
    by a modality; `elements` adds e.g. WindowCenter, RescaleSlope, NumberOfFrames."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    bits = 8 * stored.dtype.itemsize
    dataset.set_pixel_data(stored, photometric_interpretation=photometric, bits_stored=bits)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


def log_and_register(model_dir: Path, name: str, run_name: str = "tiny") -> dict[str, str]:
    """Log the model folder as medimg's pyfunc to a new run of the current MLflow store
    (MLFLOW_TRACKING_URI) and register it as `name` with aliases "champion" and
    "<run_name>-best", as the train stage does. Returns {"run_id", "model_id"}."""
    import mlflow
    from mlflow import MlflowClient

    from medimg.inference.pyfunc import log_classifier_model
    from medimg.tracking import model_registry, store

    uri = store.tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = store.get_or_create_experiment(client, f"medimg-{name}")
    preprocessing = json.loads((model_dir / "preprocessing.json").read_text())
    size, channels = preprocessing["image_size"], preprocessing["channels"]
    examples = np.stack([gradient_image(size, size)[..., None]] * 2)
    examples = np.repeat(examples, channels, axis=-1)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        model_id = log_classifier_model(model_dir / "model.keras", preprocessing, examples)
    model_registry.register_best(client, model_id, run.info.run_id, name, run_name, 0, 0.75)
    return {"run_id": run.info.run_id, "model_id": model_id}
