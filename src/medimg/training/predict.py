"""Saved models loaded, and class probabilities from them in one layout for binary and
multiclass."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import numpy as np

# Keras's messages can span lines and quote the whole config; a message of ours stays one
# line, so the reason is cut to this many characters.
_REASON_CHARS = 200


class ModelFileError(ValueError):
    """A saved model file cannot be loaded; the message is one line naming the file.

    Damaged, another format, or hostile: a config naming something that is not a Keras
    object (e.g. `os.system`) is refused by Keras, which then raises TypeError, KeyError
    or ValueError from deep inside its deserialiser.
    """


def load_model(path: Path) -> keras.Model:
    """Load a saved .keras model for inference (not compiled: no loss or metrics needed).

    Raises FileNotFoundError when there is no file, ModelFileError when it is not a
    loadable .keras file (any of the cases of ModelFileError).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved model there; run the train stage first")
    if not zipfile.is_zipfile(path):  # Keras itself would say "File not found"
        raise ModelFileError(
            f"{path}: not a Keras model file (a .keras file is a zip archive; this one is "
            "not: truncated, or another format)"
        )
    try:
        # safe_mode (Keras's default, stated because it matters here): a config holding a
        # lambda's bytecode is refused instead of run.
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # any failure inside Keras: one line (see ModelFileError)
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        if len(reason) > _REASON_CHARS:
            reason = reason[: _REASON_CHARS - 3] + "..."
        raise ModelFileError(f"{path}: not a loadable Keras model ({reason})") from None


def predict_proba(model: keras.Model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities for `x` (N, H, W, C) uint8 -> (N, num_classes) float32.

    A sigmoid model (one output unit, P(class 1)) gives two columns,
    [P(class 0), P(class 1)], so that binary and multiclass results are read alike.
    """
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ValueError(f"x must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
    expected = tuple(model.input_shape[1:])
    if any(e is not None and e != got for e, got in zip(expected, x.shape[1:], strict=True)):
        raise ValueError(f"x has image shape {x.shape[1:]}, the model expects {expected}")
    if len(x) == 0:
        return np.zeros((0, max(2, model.output_shape[-1])), dtype=np.float32)
    probabilities = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float32)
    if probabilities.shape[1] == 1:
        positive = probabilities[:, 0]
        return np.stack([1.0 - positive, positive], axis=1)
    return probabilities
