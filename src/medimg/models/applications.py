"""keras.applications backbones with a new classification head, for the zoo's modules.

`application_classifier` is the whole builder of such a model (EfficientNetB0 today):
the application built flat on the model's input without its top, one-channel input
repeated to RGB inside the model, global pooling, dropout and the classifier output;
`weights` loaded by Keras's own loader and cache ("imagenet"), from a keras.applications
weights file (*.h5), or not at all (a whole saved model is transferred by the training
side after building, medimg.models.transfer).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import keras

from medimg.errors import UserError
from medimg.models.layers import check_shape, classifier_output
from medimg.models.options import weights_kind
from medimg.models.registry import BACKBONE_NAME, HEAD_PREFIX

# Keras's own download gives up after the socket's timeout; offline it fails at name
# resolution at once, and this bounds a network that drops packets instead.
DOWNLOAD_TIMEOUT_S = 30


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights were asked for and cannot be had (offline, no cached file, or a
    weights file that does not load)."""


def keras_cache_file(name: str) -> Path:
    """Where keras.utils.get_file(name, cache_subdir="models") keeps a download."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(home) / "models" / name


def _application_base(
    application: str, x: keras.KerasTensor, weights: str, imagenet_file: str
) -> keras.Model:
    """keras.applications.<application> built on `x` (0-255 RGB), without its top.

    weights: "imagenet" (Keras's own loader and cache), "none", a file of
    keras.applications' weight layout (*.h5, e.g. a copy of `imagenet_file`, the file
    Keras downloads for it), or a saved model to transfer from (built without weights).
    """
    kind = weights_kind(weights)
    # A whole saved model (.keras, a model folder, an MLflow URI) is not keras.applications'
    # layout: the training side transfers its layers after building.
    loaded = weights if kind == "imagenet" or (kind == "file" and weights.endswith(".h5")) else None
    try:
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            return getattr(keras.applications, application)(
                include_top=False, weights=loaded, input_tensor=x
            )
        finally:
            socket.setdefaulttimeout(previous_timeout)
    except Exception as err:  # Keras raises a bare Exception for a failed download
        if kind == "file":  # h5py's OSError, Keras's ValueError: one line naming the file
            raise WeightsUnavailableError(
                f"model_options.weights = {weights!r}: not a loadable {application} weights "
                f"file ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
            ) from None
        if weights != "imagenet" or keras_cache_file(imagenet_file).is_file():
            raise
        raise WeightsUnavailableError(
            f"{application} weights 'imagenet' cannot be loaded: {imagenet_file} is not in "
            f"Keras's cache ({keras_cache_file(imagenet_file)}) and downloading it failed "
            f"({str(err).splitlines()[0][:200]}); copy the file there, or set "
            "model_options.weights to 'none', a local weights file or an MLflow model URI"
        ) from None


def application_classifier(
    application: str,
    imagenet_file: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    weights: str,
    dropout: float,
) -> keras.Model:
    """keras.applications.<application> feature extractor -> GlobalAveragePooling ->
    Dropout -> classifier output.

    Input: (batch, H, W, C) float pixels in 0-255 (not 0-1: keras.applications' networks
    rescale and normalise their input themselves, so the zoo declares input_range
    "pixels" and the training side adds no Rescaling in front). One-channel input is
    repeated to three channels inside the model ("stem_gray_to_rgb"), so X-rays fit the
    ImageNet stem and saved models still take one-channel images.

    The application's layers are built directly on this model's input (flat, not a
    nested model), keeping Keras's layer names ("stem_conv", "block6a_expand_conv",
    "top_conv") that the zoo module declares as its blocks.
    """
    check_shape(input_shape, num_classes)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if input_shape[2] == 1:
        x = keras.layers.Concatenate(axis=-1, name="stem_gray_to_rgb")([x, x, x])
    base = _application_base(application, x, weights, imagenet_file)
    x = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(base.output)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout")(x)
    outputs = classifier_output(x, num_classes)
    return keras.Model(inputs, outputs, name=BACKBONE_NAME)
