"""`mri_cnn`: a generic CNN for the 4-class brain-tumour MRI.

(batch, H, W, C) in 0-1
-> for each of `filters` (32, 64, 128, 128): Conv2D 3x3 -> BatchNorm -> ReLU
   -> MaxPooling 2x2 (BatchNorm keeps training stable at lr 1e-3 with Adam)
-> GlobalAveragePooling2D (one value per feature map: few parameters, any input
   size) or Flatten (keeps where in the image a feature was; `pooling`)
-> Dropout -> Dense `dense_units` ReLU -> Dropout
-> Dense num_classes softmax (or Dense 1 sigmoid for 2 classes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from medimg.models.options import Dropout, ModelOptions, PositiveInt
from medimg.models.registry import BACKBONE_NAME, HEAD_PREFIX, ModelSpec

if TYPE_CHECKING:
    import keras


class MriCnnOptions(ModelOptions):
    """A generic convolution block per entry of `filters`, then one dense layer."""

    filters: list[PositiveInt] = Field(default_factory=lambda: [32, 64, 128, 128], min_length=1)
    dense_units: PositiveInt = 128
    dropout: Dropout = 0.5
    batch_norm: bool = True
    pooling: Literal["global_average", "flatten"] = Field(
        "global_average", description="how the last feature map becomes a vector"
    )


def blocks(options: MriCnnOptions) -> tuple[str, ...]:
    return tuple(f"block{k}" for k in range(1, len(options.filters) + 1))


def build(
    input_shape: tuple[int, int, int], num_classes: int, options: MriCnnOptions
) -> keras.Model:
    import keras  # here, not at the top: the registry imports this module without Keras

    from medimg.models.layers import check_shape, conv_block, dense_head

    check_shape(input_shape, num_classes)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for name, n_filters in zip(blocks(options), options.filters, strict=True):
        x = conv_block(x, n_filters, name, options.batch_norm)
    if options.pooling == "global_average":
        x = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(x)
    else:
        x = keras.layers.Flatten(name=f"{HEAD_PREFIX}flatten")(x)
    outputs = dense_head(x, [options.dense_units], options.dropout, num_classes)
    return keras.Model(inputs, outputs, name=BACKBONE_NAME)


MODEL = ModelSpec(
    options=MriCnnOptions,
    build=build,
    blocks=blocks,
    uses_batch_norm=lambda options: options.batch_norm,
    tiny_options={"filters": [4, 8], "dense_units": 8},
)
