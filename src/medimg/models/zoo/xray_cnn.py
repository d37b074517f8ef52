"""`xray_cnn`: the thesis's pneumonia CNN.

(batch, H, W, C) in 0-1 -> `conv_blocks` x (Conv2D 3x3 `feature_maps`, [BatchNorm],
ReLU, MaxPooling 2x2) -> Flatten -> Dense 128 ReLU -> Dense 64 ReLU -> Dense 1
sigmoid (2 classes) or Dense num_classes softmax. The thesis's model is the default
options: 5 blocks of 32, no batch norm, no dropout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from medimg.models.options import Dropout, ModelOptions, PositiveInt
from medimg.models.registry import BACKBONE_NAME, HEAD_PREFIX, ModelSpec

if TYPE_CHECKING:
    import keras


class XrayCnnOptions(ModelOptions):
    """`conv_blocks` x (Conv 3x3 `feature_maps`, ReLU, MaxPool), then `dense_units`."""

    conv_blocks: PositiveInt = 5
    feature_maps: PositiveInt = 32
    dense_units: list[PositiveInt] = Field(default_factory=lambda: [128, 64])
    batch_norm: bool = Field(False, description="BatchNorm after each convolution (not thesis)")
    dropout: Dropout = Field(0.0, description="before each dense layer (not thesis)")


def blocks(options: XrayCnnOptions) -> tuple[str, ...]:
    return tuple(f"block{k}" for k in range(1, options.conv_blocks + 1))


def build(
    input_shape: tuple[int, int, int], num_classes: int, options: XrayCnnOptions
) -> keras.Model:
    import keras  # here, not at the top: the registry imports this module without Keras

    from medimg.models.layers import check_shape, conv_block, dense_head

    check_shape(input_shape, num_classes)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for name in blocks(options):
        x = conv_block(x, options.feature_maps, name, options.batch_norm)
    x = keras.layers.Flatten(name=f"{HEAD_PREFIX}flatten")(x)
    outputs = dense_head(x, options.dense_units, options.dropout, num_classes)
    return keras.Model(inputs, outputs, name=BACKBONE_NAME)


MODEL = ModelSpec(
    options=XrayCnnOptions,
    build=build,
    blocks=blocks,
    uses_batch_norm=lambda options: options.batch_norm,
    tiny_options={"feature_maps": 4, "dense_units": [8], "dropout": 0.1},
)
