"""A seed's class probabilities on the val and test splits, and their file.

The train stage predicts once, with the model it keeps, and saves the
probabilities in `predictions.npz` with a fingerprint of the arrays they were
computed on; the evaluate stage reads them. Evaluate then needs no deep-learning
framework (importing TensorFlow was a third of its time) and can tell when the
prepared data changed after training. No metrics here (scikit-learn), so that
the train stage does not pay for their import either.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medimg import atomic

EVALUATED_SPLITS = ("val", "test")
PREDICTIONS_FILE = "predictions.npz"


@dataclass
class SplitPredictions:
    """Labels (N,) and class probabilities (N, K) of each evaluated split."""

    y: dict[str, np.ndarray]
    proba: dict[str, np.ndarray]


def predict_splits(model: Any, data: Any) -> SplitPredictions:
    """Class probabilities of `model` (a keras.Model) on `data`'s (PreparedData) val and test."""
    from medimg.inference.probabilities import predict_proba

    return SplitPredictions(
        y={split: np.asarray(data.split(split).y) for split in EVALUATED_SPLITS},
        proba={split: predict_proba(model, data.split(split).x) for split in EVALUATED_SPLITS},
    )


def data_fingerprint(data: Any) -> str:
    """Hex digest of `data`'s (PreparedData) val and test images and labels.

    Equal digests mean predictions were made on exactly these rows, in this order.
    BLAKE2b because it hashes faster than SHA-256 here (the full MRI test split at
    224 px is about 65 MB).
    """
    digest = hashlib.blake2b(digest_size=16)
    for split in EVALUATED_SPLITS:
        arrays = data.split(split)
        for array in (arrays.x, arrays.y):
            array = np.ascontiguousarray(array)
            digest.update(f"{split}:{array.dtype.str}:{array.shape}".encode())
            digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _array_key(split: str, kind: str) -> str:
    """The .npz key of one array: "val_y", "test_proba", ... (the GPU runner's layout too)."""
    return f"{split}_{kind}"


ARRAY_KEYS = tuple(_array_key(split, kind) for split in EVALUATED_SPLITS for kind in ("y", "proba"))


def save_predictions(path: Path, predictions: SplitPredictions, fingerprint: str) -> None:
    """Write `predictions` and the data's fingerprint to `path` (.npz) whole or not at all."""
    arrays = {
        _array_key(split, kind): getattr(predictions, kind)[split]
        for split in EVALUATED_SPLITS
        for kind in ("y", "proba")
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, data_fingerprint=np.array(fingerprint), **arrays)
    atomic.write_file(Path(path), buffer.getvalue())


def read_predictions(path: Path) -> tuple[SplitPredictions, str]:
    """(predictions, fingerprint of the data they were made on) from a save_predictions file.

    Raises ValueError naming the file when it is not one.
    """
    expected = {"data_fingerprint", *ARRAY_KEYS}
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a predictions file (an .npz archive of save_predictions)")
    try:
        with np.load(path, allow_pickle=False) as saved:
            loaded = {key: saved[key] for key in expected & set(saved.files)}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: cannot be read as a predictions file: {err}") from None
    missing = sorted(expected - set(loaded))
    if missing:
        raise ValueError(f"{path}: not a predictions file, it lacks {missing}")
    predictions = SplitPredictions(
        y={split: loaded[_array_key(split, "y")] for split in EVALUATED_SPLITS},
        proba={split: loaded[_array_key(split, "proba")] for split in EVALUATED_SPLITS},
    )
    return predictions, str(loaded["data_fingerprint"])
