"""EfficientNetB0 (Tan & Le 2019) from keras.applications, with a new classification head."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import keras

from medimg.models import BACKBONE_NAME, HEAD_PREFIX
from medimg.models.options import EfficientNetB0Options, weights_kind
from medimg.models.simple_cnn import check_shape, classifier_output

# The file keras.applications.EfficientNetB0(include_top=False) downloads into Keras's cache.
IMAGENET_FILE = "efficientnetb0_notop.h5"
# Keras's own download gives up after the socket's timeout; offline it fails at name
# resolution at once, and this bounds a network that drops packets instead.
DOWNLOAD_TIMEOUT_S = 30


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for and cannot be had (offline, no cached file, or a
    weights file that does not load)."""


def keras_cache_file(name: str) -> Path:
    """Where keras.utils.get_file(name, cache_subdir="models") keeps a download."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(home) / "models" / name


def _efficientnet_base(x: keras.KerasTensor, weights: str) -> keras.Model:
    """keras.applications.EfficientNetB0 built on `x` (0-255 RGB), without its top.

    weights: "imagenet" (Keras's own loader and cache), "none", a file of
    keras.applications' weight layout (*.h5, e.g. a copy of efficientnetb0_notop.h5),
    or a saved model to transfer from (built without weights here).
    """
    kind = weights_kind(weights)
    # A whole saved model (.keras, a model folder, an MLflow URI) is not keras.applications'
    # layout: the training side transfers its layers after building.
    loaded = weights if kind == "imagenet" or (kind == "file" and weights.endswith(".h5")) else None
    try:
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            return keras.applications.EfficientNetB0(
                include_top=False, weights=loaded, input_tensor=x
            )
        finally:
            socket.setdefaulttimeout(previous_timeout)
    except Exception as err:  # Keras raises a bare Exception for a failed download
        if kind == "file":  # h5py's OSError, Keras's ValueError: one line naming the file
            raise WeightsUnavailableError(
                f"model_options.weights = {weights!r}: not a loadable EfficientNetB0 weights "
                f"file ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
            ) from None
        if weights != "imagenet" or keras_cache_file(IMAGENET_FILE).is_file():
            raise
        raise WeightsUnavailableError(
            f"EfficientNetB0 weights 'imagenet' cannot be loaded: {IMAGENET_FILE} is not in "
            f"Keras's cache ({keras_cache_file(IMAGENET_FILE)}) and downloading it failed "
            f"({str(err).splitlines()[0][:200]}); copy the file there, or set "
            "model_options.weights to 'none', a local weights file or an MLflow model URI"
        ) from None


def build_efficientnet_b0(
    input_shape: tuple[int, int, int], num_classes: int, options: EfficientNetB0Options
) -> keras.Model:
    """EfficientNetB0 feature extractor -> GlobalAveragePooling -> Dropout -> classifier output.

    Input: (batch, H, W, C) float pixels in 0-255 (not 0-1: keras.applications'
    EfficientNet rescales and normalises its input itself, so the training side adds
    no Rescaling in front of it; see medimg.models.MODELS). One-channel input is
    repeated to three channels inside the model ("stem_gray_to_rgb"), so X-rays fit
    the ImageNet stem and saved models still take one-channel images.

    The EfficientNet layers are built directly on this model's input (flat, not a
    nested model), keeping Keras's layer names ("stem_conv", "block6a_expand_conv",
    "top_conv") that freezing and fine-tuning rely on.
    """
    check_shape(input_shape, num_classes)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if input_shape[2] == 1:
        x = keras.layers.Concatenate(axis=-1, name="stem_gray_to_rgb")([x, x, x])
    base = _efficientnet_base(x, options.weights)
    x = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(base.output)
    if options.dropout:
        x = keras.layers.Dropout(options.dropout, name=f"{HEAD_PREFIX}dropout")(x)
    outputs = classifier_output(x, num_classes)
    return keras.Model(inputs, outputs, name=BACKBONE_NAME)
