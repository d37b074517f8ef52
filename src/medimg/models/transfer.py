"""Start a backbone from another trained model's layers (transfer learning).

The source is a whole saved model (.keras), for example one of this project's
models/<run>/seed-<k>/model.keras or a registered MLflow model downloaded to a
folder: the X-ray model's convolutional layers can seed an MRI model. Layers are
matched by name (medimg's models and keras.applications name their layers), the
new task's head ("head_*", "output") is never copied, and a first convolution
trained on one-channel X-rays is adapted to three-channel input by spreading its
kernel over the channels (each channel gets 1/3 of the grey kernel, so a grey
image gives the same response as before).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from medimg.errors import UserError
from medimg.models.fine_tuning import is_head
from medimg.models.registry import BACKBONE_NAME

MODEL_FILE = "model.keras"


class TransferError(UserError, ValueError):
    """The source model cannot seed the target (missing, unreadable, nothing in common)."""


@dataclass
class TransferReport:
    """Which target layers got the source's weights, and which did not, and why."""

    source: str
    copied: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def load_source_model(path: Path) -> keras.Model:
    """The backbone of a saved model (a .keras file or a folder holding model.keras)."""
    path = Path(path)
    model_file = path / MODEL_FILE if path.is_dir() else path
    if not model_file.is_file():
        raise TransferError(f"{model_file}: no saved model there to take weights from")
    # Imported here: medimg.training imports this module (fit.py).
    from medimg.models.saved import ModelFileError, load_model

    try:
        model = load_model(model_file)
    except ModelFileError as err:  # damaged, foreign or hostile; one line naming the file
        raise TransferError(str(err)) from None
    names = [layer.name for layer in model.layers]
    return model.get_layer(BACKBONE_NAME) if BACKBONE_NAME in names else model


def _adapt_input_channels(source: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray | None:
    """A conv kernel (h, w, c_in, c_out) trained on 1 channel, spread over c_in channels."""
    if (
        source.ndim == 4
        and source.shape[2] == 1
        and source.shape[:2] + source.shape[3:] == target_shape[:2] + target_shape[3:]
    ):
        return np.repeat(source, target_shape[2], axis=2) / target_shape[2]
    return None


def transfer_weights(source: keras.Model, target: keras.Model, source_name: str) -> TransferReport:
    """Copy every non-head layer of `source` into the same-named layer of `target`.

    A layer is copied only when all its weights have the target's shapes (or a
    first convolution's input channels can be adapted, see the module docstring).
    Raises TransferError when no layer at all could be copied.
    """
    report = TransferReport(source=source_name)
    by_name = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        if not layer.weights:
            continue
        if is_head(layer):
            report.skipped[layer.name] = "the new task's head"
            continue
        donor = by_name.get(layer.name)
        if donor is None or len(donor.weights) != len(layer.weights):
            report.skipped[layer.name] = "no layer of that name and kind in the source"
            continue
        values = [np.asarray(w) for w in donor.get_weights()]
        shapes = [tuple(w.shape) for w in layer.weights]
        if all(v.shape == s for v, s in zip(values, shapes, strict=True)):
            layer.set_weights(values)
            report.copied.append(layer.name)
            continue
        adapted = [
            _adapt_input_channels(v, s) if v.shape != s else v
            for v, s in zip(values, shapes, strict=True)
        ]
        if all(a is not None for a in adapted):
            layer.set_weights(adapted)
            report.adapted.append(layer.name)
        else:
            found = [v.shape for v in values]
            report.skipped[layer.name] = f"shapes differ: source {found}, target {shapes}"
    if not report.copied and not report.adapted:
        raise TransferError(
            f"{source_name}: no layer of it fits the model being built "
            f"(source layers {sorted(by_name)[:8]}...); use a model of the same architecture"
        )
    return report
