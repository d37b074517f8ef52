"""`efficientnet_b0`: EfficientNetB0 (Tan & Le 2019) from keras.applications, a new head.

Its ImageNet weights come through Keras's own loader and cache; offline without the
cached file the build fails at once, naming the other choices
(medimg.models.applications).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medimg.models.options import Dropout, ModelOptions, PretrainedWeights
from medimg.models.registry import ModelSpec

if TYPE_CHECKING:
    import keras

# The file keras.applications.EfficientNetB0(include_top=False) downloads into Keras's cache.
IMAGENET_FILE = "efficientnetb0_notop.h5"
# Keras's layer names, bottom first: the input "normalization" (ImageNet's mean and
# variance, no trainable weights), stem_conv, block1a_... to block7a_..., top_conv.
BLOCKS = ("normalization", "stem", *(f"block{k}" for k in range(1, 8)), "top")


class EfficientNetB0Options(ModelOptions):
    """The initial weights and the head's dropout; the network is keras.applications'."""

    weights: PretrainedWeights = "imagenet"  # type: ignore[valid-type]
    dropout: Dropout = 0.2


def build(
    input_shape: tuple[int, int, int], num_classes: int, options: EfficientNetB0Options
) -> keras.Model:
    from medimg.models.applications import application_classifier  # imports Keras

    return application_classifier(
        "EfficientNetB0", IMAGENET_FILE, input_shape, num_classes, options.weights, options.dropout
    )


MODEL = ModelSpec(
    options=EfficientNetB0Options,
    build=build,
    blocks=lambda options: BLOCKS,
    uses_batch_norm=lambda options: True,
    # keras.applications rescales and normalises 0-255 input itself; a Rescaling(1/255)
    # in front of it would scale twice.
    input_range="pixels",
    tiny_options={"weights": "none"},
)
