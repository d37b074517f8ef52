"""Small CNNs: the thesis's X-ray model and a generic CNN for the brain-tumour MRI.

Both take uint8-range pixels (0-255) of shape (batch, H, W, C) and do their own
preprocessing (optional resize, rescale to 0-1, random training augmentation),
so a saved model needs no separate preprocessing code. Output: one sigmoid unit
for two classes, else `num_classes` softmax units. Models are returned uncompiled.

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

from medimg.config import TrainAugmentConfig
from medimg.models.augmentation_layers import training_augmentation

KERNEL_SIZE = 3
POOL_SIZE = 2
PADDING = "same"
BN_MOMENTUM = 0.9

XRAY_CONV_BLOCKS = 5
XRAY_FEATURE_MAPS = 32
XRAY_DENSE_UNITS = (128, 64)

MRI_FILTERS = (32, 64, 128, 128)
MRI_DENSE_UNITS = 128
MRI_DROPOUT = 0.5


def _check_shape(input_shape: Sequence[int], num_classes: int) -> None:
    if len(input_shape) != 3 or input_shape[2] not in (1, 3) or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C) with C 1 or 3, got {tuple(input_shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")


def preprocessing_block(
    inputs: keras.KerasTensor,
    image_size: int | None,
    augmentation: TrainAugmentConfig | None,
    augment_in_model: bool,
) -> keras.KerasTensor:
    """Resize (when `image_size` differs from the input), rescale 0-255 -> 0-1, augment.

    Args:
        inputs: (batch, H, W, C) uint8-range pixels.
        image_size: square model size; None keeps the input size.
        augmentation: random training augmentation; None for none.
        augment_in_model: True: rotation and zoom are layers here; False: the loader
            does them, and only the (cheap) Gaussian noise is a layer here.
    """
    x = inputs
    height, width = inputs.shape[1], inputs.shape[2]
    if image_size is not None and (height, width) != (image_size, image_size):
        x = keras.layers.Resizing(image_size, image_size, name="resize")(x)
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    if augmentation is not None:
        x = training_augmentation(x, augmentation, geometric=augment_in_model)
    return x


def conv_block(
    x: keras.KerasTensor, filters: int, name: str, batch_norm: bool = False
) -> keras.KerasTensor:
    """Conv2D 3x3 -> [BatchNorm] -> ReLU -> MaxPooling 2x2 (halves H and W)."""
    x = keras.layers.Conv2D(
        filters, KERNEL_SIZE, padding=PADDING, use_bias=not batch_norm, name=f"{name}_conv"
    )(x)
    if batch_norm:
        # momentum 0.9 rather than Keras's 0.99: the moving statistics used at
        # inference must settle within a few hundred steps (the embedded sample
        # trains ~100); with 0.99 the sample's MRI model predicted one class.
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    return keras.layers.MaxPooling2D(POOL_SIZE, padding=PADDING, name=f"{name}_pool")(x)


def classifier_head(x: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    """Dense(1, sigmoid) for two classes (P(class 1)), else Dense(num_classes, softmax)."""
    if num_classes == 2:
        return keras.layers.Dense(1, activation="sigmoid", name="output")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="output")(x)


def build_xray_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    feature_maps: int = XRAY_FEATURE_MAPS,
    dense_units: Sequence[int] = XRAY_DENSE_UNITS,
    augmentation: TrainAugmentConfig | None = None,
    augment_in_model: bool = True,
    image_size: int | None = None,
) -> keras.Model:
    """The thesis's pneumonia CNN.

    uint8 pixels (batch, H, W, C) -> [Resizing to image_size] -> Rescaling(1/255)
    -> [random augmentation, training only] -> 5 x (Conv2D 3x3 `feature_maps`,
    ReLU, MaxPooling 2x2) -> Flatten -> Dense 128 ReLU -> Dense 64 ReLU
    -> Dense 1 sigmoid (2 classes) or Dense num_classes softmax.
    """
    _check_shape(input_shape, num_classes)
    inputs = keras.Input(shape=tuple(input_shape), name="pixels")
    x = preprocessing_block(inputs, image_size, augmentation, augment_in_model)
    for block in range(1, XRAY_CONV_BLOCKS + 1):
        x = conv_block(x, feature_maps, name=f"block{block}")
    x = keras.layers.Flatten(name="flatten")(x)
    for i, units in enumerate(dense_units, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"dense{i}")(x)
    return keras.Model(inputs, classifier_head(x, num_classes), name="xray_cnn")


def build_mri_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    filters: Sequence[int] = MRI_FILTERS,
    dense_units: int = MRI_DENSE_UNITS,
    dropout: float = MRI_DROPOUT,
    batch_norm: bool = True,
    augmentation: TrainAugmentConfig | None = None,
    augment_in_model: bool = True,
    image_size: int | None = None,
) -> keras.Model:
    """A generic CNN for the 4-class brain-tumour MRI.

    uint8 pixels (batch, H, W, C) -> [Resizing to image_size] -> Rescaling(1/255)
    -> [random augmentation, training only]
    -> for each of `filters` (32, 64, 128, 128): Conv2D 3x3 -> BatchNorm -> ReLU
       -> MaxPooling 2x2 (BatchNorm keeps training stable at lr 1e-3 with Adam)
    -> GlobalAveragePooling2D (one value per feature map: few parameters, any input size)
    -> Dropout -> Dense `dense_units` ReLU -> Dropout
    -> Dense num_classes softmax (or Dense 1 sigmoid for 2 classes).
    """
    _check_shape(input_shape, num_classes)
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    inputs = keras.Input(shape=tuple(input_shape), name="pixels")
    x = preprocessing_block(inputs, image_size, augmentation, augment_in_model)
    for block, n_filters in enumerate(filters, start=1):
        x = conv_block(x, n_filters, name=f"block{block}", batch_norm=batch_norm)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout1")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense1")(x)
    x = keras.layers.Dropout(dropout, name="dropout2")(x)
    return keras.Model(inputs, classifier_head(x, num_classes), name="mri_cnn")
