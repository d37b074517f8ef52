"""Keras building blocks the zoo's networks share: the input check, conv blocks, the head.

Every network ends in one sigmoid unit for two classes, else `num_classes` softmax
units (`classifier_output`), and names its head's layers with HEAD_PREFIX.

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

from medimg.models.registry import HEAD_PREFIX, OUTPUT_LAYER

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
