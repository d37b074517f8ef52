"""Class probabilities from a Keras model, in one layout for binary and multiclass."""

from __future__ import annotations

import keras
import numpy as np


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
