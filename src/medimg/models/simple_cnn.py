"""Small CNNs: the thesis's X-ray model and a generic CNN for the brain-tumour MRI.

Both take float pixels in 0-1 of shape (batch, H, W, C) (the training side rescales
0-255 input in front of them, medimg.training.classifier) and end in one sigmoid
unit for two classes, else `num_classes` softmax units. Returned uncompiled.

Padding is "same" everywhere: with Keras's default "valid", each 3x3
convolution loses 2 pixels before the pooling halves the map, so the X-ray
model's five blocks shrink a 32 px input to nothing (32 -> 15 -> 6 -> 2 -> 0);
with "same" only the pooling halves it (rounding up), 32 px -> 1 px after five
blocks, so tiny test images work. At the thesis's 600 px the flattened map is
19 x 19 x 32 instead of 16 x 16 x 32 with "valid".
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from medimg.models import BACKBONE_NAME, HEAD_PREFIX, OUTPUT_LAYER
from medimg.models.options import MriCnnOptions, XrayCnnOptions

KERNEL_SIZE = 3
POOL_SIZE = 2
PADDING = "same"
# momentum 0.9 rather than Keras's 0.99: the moving statistics used at inference must
# settle within a few hundred steps (the embedded sample trains ~100); with 0.99 the
# sample's MRI model predicted one class.
BN_MOMENTUM = 0.9


def check_shape(input_shape: Sequence[int], num_classes: int) -> None:
    """Raise ValueError unless input_shape is (H, W, C) with C 1 or 3 and num_classes >= 2."""
    if len(input_shape) != 3 or input_shape[2] not in (1, 3) or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C) with C 1 or 3, got {tuple(input_shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")


def conv_block(
    x: keras.KerasTensor, filters: int, name: str, batch_norm: bool = False
) -> keras.KerasTensor:
    """Conv2D 3x3 -> [BatchNorm] -> ReLU -> MaxPooling 2x2 (halves H and W)."""
    x = keras.layers.Conv2D(
        filters, KERNEL_SIZE, padding=PADDING, use_bias=not batch_norm, name=f"{name}_conv"
    )(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    return keras.layers.MaxPooling2D(POOL_SIZE, padding=PADDING, name=f"{name}_pool")(x)


def classifier_output(x: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    """Dense(1, sigmoid) for two classes (P(class 1)), else Dense(num_classes, softmax).

    float32 whatever the global dtype policy, so that mixed precision keeps the
    probabilities and the loss in full precision.
    """
    if num_classes == 2:
        return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_LAYER)(x)
    return keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name=OUTPUT_LAYER
    )(x)


def dense_head(
    x: keras.KerasTensor,
    units: Sequence[int],
    dropout: float,
    num_classes: int,
    dropout_before_output: bool = True,
) -> keras.KerasTensor:
    """([Dropout] -> Dense ReLU) for each of `units` -> [Dropout] -> the classifier output.

    Dropout layers are left out when `dropout` is 0; the one in front of the output
    also when `dropout_before_output` is False.
    """
    for i, n in enumerate(units, start=1):
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout{i}")(x)
        x = keras.layers.Dense(n, activation="relu", name=f"{HEAD_PREFIX}dense{i}")(x)
    if dropout and dropout_before_output:
        x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout_out")(x)
    return classifier_output(x, num_classes)


def build_xray_cnn(
    input_shape: tuple[int, int, int], num_classes: int, options: XrayCnnOptions
) -> keras.Model:
    """The thesis's pneumonia CNN.

    (batch, H, W, C) in 0-1 -> `conv_blocks` x (Conv2D 3x3 `feature_maps`, [BatchNorm],
    ReLU, MaxPooling 2x2) -> Flatten -> Dense 128 ReLU -> Dense 64 ReLU -> Dense 1
    sigmoid (2 classes) or Dense num_classes softmax. The thesis's model is the
    default options: 5 blocks of 32, no batch norm, no dropout.
    """
    check_shape(input_shape, num_classes)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for block in range(1, options.conv_blocks + 1):
        x = conv_block(x, options.feature_maps, f"block{block}", options.batch_norm)
    x = keras.layers.Flatten(name=f"{HEAD_PREFIX}flatten")(x)
    outputs = dense_head(x, options.dense_units, options.dropout, num_classes)
    return keras.Model(inputs, outputs, name=BACKBONE_NAME)


def build_mri_cnn(
    input_shape: tuple[int, int, int], num_classes: int, options: MriCnnOptions
) -> keras.Model:
    """A generic CNN for the 4-class brain-tumour MRI.

    (batch, H, W, C) in 0-1
    -> for each of `filters` (32, 64, 128, 128): Conv2D 3x3 -> BatchNorm -> ReLU
       -> MaxPooling 2x2 (BatchNorm keeps training stable at lr 1e-3 with Adam)
    -> GlobalAveragePooling2D (one value per feature map: few parameters, any input
       size) or Flatten (keeps where in the image a feature was; `pooling`)
    -> Dropout -> Dense `dense_units` ReLU -> Dropout
    -> Dense num_classes softmax (or Dense 1 sigmoid for 2 classes).
    """
    check_shape(input_shape, num_classes)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for block, n_filters in enumerate(options.filters, start=1):
        x = conv_block(x, n_filters, f"block{block}", options.batch_norm)
    if options.pooling == "global_average":
        x = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(x)
    else:
        x = keras.layers.Flatten(name=f"{HEAD_PREFIX}flatten")(x)
    outputs = dense_head(x, [options.dense_units], options.dropout, num_classes)
    return keras.Model(inputs, outputs, name=BACKBONE_NAME)
