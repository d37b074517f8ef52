"""`alexnet`: AlexNet (Krizhevsky, Sutskever, Hinton 2012), adapted to the input size and
class count (`build` says how and why)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from medimg.models.options import Dropout, ModelOptions, TransferWeights
from medimg.models.registry import BACKBONE_NAME, HEAD_PREFIX, ModelSpec

if TYPE_CHECKING:
    import keras

# (filters, kernel, stride, max-pool after it) of the five convolutions, as in the paper.
CONV_LAYERS = (
    (96, 11, 4, True),
    (256, 5, 1, True),
    (384, 3, 1, False),
    (384, 3, 1, False),
    (256, 3, 1, True),
)
DENSE_UNITS = (4096, 4096)
POOL_SIZE = 3
POOL_STRIDE = 2  # overlapping pooling, as in the paper


class AlexNetOptions(ModelOptions):
    """AlexNet (2012), adapted; `width` scales every layer (1.0 = the original widths)."""

    width: Annotated[float, Field(gt=0.0, le=4.0)] = 1.0
    dropout: Dropout = 0.5
    batch_norm: bool = Field(False, description="BatchNorm after each conv instead of LRN")
    weights: TransferWeights = "none"  # type: ignore[valid-type]


def blocks(options: AlexNetOptions) -> tuple[str, ...]:
    """One block per convolution, as the layers are named."""
    return tuple(f"block{k}" for k in range(1, len(CONV_LAYERS) + 1))


def build(
    input_shape: tuple[int, int, int], num_classes: int, options: AlexNetOptions
) -> keras.Model:
    """AlexNet: 5 convolutions (96-256-384-384-256; 11x11 stride 4, 5x5, 3x3) with three
    overlapping 3x3/2 max-poolings, then Dense 4096 -> Dense 4096 with dropout, then the
    classifier output.

    Adapted, and why:
    - "same" padding in every convolution and pooling, so that any input of 32 px
      or more keeps a feature map (the paper's 224 px gives 7 x 7 x 256 here rather
      than 6 x 6 x 256; 150 px gives 5 x 5; 32 px gives 1 x 1).
    - One tower instead of the paper's two GPU halves (their split was a memory
      workaround, not part of the method), so conv2, conv4 and conv5 see all maps.
    - Local response normalisation is left out: Keras has no LRN layer and later
      work (e.g. VGG, Simonyan & Zisserman 2015) found it does not help;
      `batch_norm` puts BatchNormalization after each convolution instead.
    - The output is one sigmoid unit for 2 classes or `num_classes` softmax units
      instead of 1,000; `width` scales every layer's filters and units (1.0 = the
      paper; the embedded-sample profile uses a narrow one to stay fast on a CPU).
    - ReLU and dropout 0.5 in front of both dense layers are the paper's.

    Input: (batch, H, W, C) float in 0-1. `options.weights` (initial weights from a
    file or an MLflow model) is applied by the training side after building.
    """
    import keras  # here, not at the top: the registry imports this module without Keras

    from medimg.models.layers import BN_MOMENTUM, check_shape, dense_head

    check_shape(input_shape, num_classes)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for name, (filters, kernel, stride, pool) in zip(blocks(options), CONV_LAYERS, strict=True):
        x = keras.layers.Conv2D(
            max(1, round(filters * options.width)),
            kernel,
            strides=stride,
            padding="same",
            use_bias=not options.batch_norm,
            name=f"{name}_conv",
        )(x)
        if options.batch_norm:
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
        if pool:
            x = keras.layers.MaxPooling2D(
                POOL_SIZE, strides=POOL_STRIDE, padding="same", name=f"{name}_pool"
            )(x)
    x = keras.layers.Flatten(name=f"{HEAD_PREFIX}flatten")(x)
    units = [max(1, round(n * options.width)) for n in DENSE_UNITS]
    outputs = dense_head(x, units, options.dropout, num_classes, dropout_before_output=False)
    return keras.Model(inputs, outputs, name=BACKBONE_NAME)


MODEL = ModelSpec(
    options=AlexNetOptions,
    build=build,
    blocks=blocks,
    uses_batch_norm=lambda options: options.batch_norm,
    tiny_options={"width": 0.05},
)
