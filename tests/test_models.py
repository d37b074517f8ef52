"""Models: shapes, one training step, augmentation active only in training."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medimg.config import TrainAugmentConfig
from medimg.models import get_builder
from medimg.models.augmentation_layers import (
    choose_augmentation_site,
    zoom_factor_for_keras,
)
from medimg.models.simple_cnn import build_mri_cnn, build_xray_cnn

AUGMENT = TrainAugmentConfig(rotation_deg=5, zoom_range=(1.0, 1.2), noise_std=20)


def _pixels(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


@pytest.mark.parametrize(
    ("name", "channels", "num_classes", "out_units"),
    [("xray_cnn", 1, 2, 1), ("mri_cnn", 3, 4, 4), ("xray_cnn", 3, 3, 3)],
)
def test_registered_model_outputs_probabilities_and_trains(name, channels, num_classes, out_units):
    keras.utils.set_random_seed(0)
    model = get_builder(name)((32, 32, channels), num_classes, augmentation=AUGMENT)
    x = _pixels(4, 32, channels)
    out = keras.ops.convert_to_numpy(model(x, training=False))
    assert out.shape == (4, out_units)
    assert np.all((out >= 0) & (out <= 1))
    if out_units > 1:
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    loss = "binary_crossentropy" if out_units == 1 else "sparse_categorical_crossentropy"
    model.compile(optimizer="adam", loss=loss)
    y = np.array([0, 1, 0, 1], dtype="float32" if out_units == 1 else "int32")
    before = [w.copy() for w in model.get_weights()]
    model.train_on_batch(x, y)
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True)]
    assert any(changed)


def test_xray_cnn_has_the_thesis_layers():
    model = build_xray_cnn((32, 32, 1), 2)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [c.filters for c in convs] == [32] * 5
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert [d.units for d in dense] == [128, 64, 1]
    assert dense[-1].activation.__name__ == "sigmoid"


def test_resizing_only_when_image_size_differs():
    resized = build_xray_cnn((48, 48, 1), 2, image_size=32)
    same = build_xray_cnn((32, 32, 1), 2, image_size=32)
    assert "resize" in [layer.name for layer in resized.layers]
    assert "resize" not in [layer.name for layer in same.layers]
    assert resized.get_layer("resize").output.shape[1:3] == (32, 32)


@pytest.mark.parametrize("augment_in_model", [True, False])
def test_augmentation_only_in_training(augment_in_model):
    keras.utils.set_random_seed(1)
    model = build_mri_cnn((32, 32, 3), 4, augmentation=AUGMENT, augment_in_model=augment_in_model)
    names = {layer.name for layer in model.layers}
    assert ("random_rotation" in names) is augment_in_model
    assert ("random_zoom" in names) is augment_in_model
    assert "gaussian_noise" in names  # noise stays in the model either way
    x = _pixels(2, 32, 3)
    # Up to the augmentation layers: identical at inference, different in training.
    upto = keras.Model(model.input, model.get_layer("gaussian_noise").output)
    inference = [keras.ops.convert_to_numpy(upto(x, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    np.testing.assert_allclose(inference[0], x / 255.0, rtol=1e-6)
    training = keras.ops.convert_to_numpy(upto(x, training=True))
    assert not np.allclose(training, inference[0])
    a, b = (keras.ops.convert_to_numpy(model(x, training=False)) for _ in range(2))
    np.testing.assert_array_equal(a, b)


def test_zoom_factor_conversion_magnifies_as_configured():
    # 120 % magnification reads 1/1.2 of the field: RandomZoom factor 1/1.2 - 1.
    assert zoom_factor_for_keras((1.0, 1.2)) == pytest.approx((1 / 1.2 - 1, 0.0))
    # Checked on an image: a 2x zoom-in maps the central half onto the whole image.
    image = np.zeros((1, 16, 16, 1), dtype="float32")
    image[0, 4:12, 4:12, 0] = 1.0  # a bright square covering the central half
    layer = keras.layers.RandomZoom(
        height_factor=zoom_factor_for_keras((2.0, 2.0)), interpolation="nearest"
    )
    zoomed = keras.ops.convert_to_numpy(layer(image, training=True))
    assert zoomed.mean() > 0.9  # the square now fills (almost) the whole image


def test_choose_augmentation_site():
    assert choose_augmentation_site(AUGMENT, "jax") == "loader"
    explicit = TrainAugmentConfig(rotation_deg=5, where="model")
    assert choose_augmentation_site(explicit, "jax") == "model"
    # The measured choices (benchmarks/train_throughput.py and the H200 JAX run).
    assert choose_augmentation_site(AUGMENT, "tensorflow") == "model"
    with pytest.raises(ValueError, match="unknown Keras backend"):
        choose_augmentation_site(AUGMENT, "theano")


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="input_shape"):
        build_xray_cnn((32, 32), 2)
    with pytest.raises(ValueError, match="num_classes"):
        build_mri_cnn((32, 32, 3), 1)
