"""Batch-norm statistics recomputed on clean training images (batch_norm_statistics: clean)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medimg.config.runs import TrainAugmentConfig
from medimg.models.registry import BACKBONE_NAME, build_backbone
from medimg.training.batch_norm import (
    NoBatchNormError,
    batch_norm_layers,
    clean_training_sample,
    recompute_batch_norm_statistics,
)
from medimg.training.classifier import assemble_classifier
from medimg.training.fit import CHECKPOINT_FILE, fit_one_seed
from test_fit import binary_data, xray_run  # noqa: F401  (binary_data is a fixture)


def _classifier(batch_norm: bool = True) -> keras.Model:
    """The MRI CNN at 16 px behind a 24 px, 0-255 input with noise in the model."""
    backbone = build_backbone(
        "mri_cnn", (16, 16, 1), 4, {"filters": [4, 8], "dense_units": 8, "batch_norm": batch_norm}
    )
    return assemble_classifier(
        backbone, (24, 24, 1), "unit", TrainAugmentConfig(noise_std=20), augment_in_model=True
    )


def _images(n: int = 40) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 24, 24, 1)).astype(np.uint8)


def _spoil_statistics(model: keras.Model) -> None:
    for layer in batch_norm_layers(model.get_layer(BACKBONE_NAME)):
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 7.0))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 30.0))


def test_each_layer_then_normalises_the_sample_to_its_beta_and_gamma():
    """The defining property: in inference mode, over the sample, every batch-norm output
    channel has mean beta and variance gamma^2 * var / (var + epsilon)."""
    model = _classifier()
    images = _images()
    backbone = model.get_layer(BACKBONE_NAME)
    for layer in batch_norm_layers(backbone):  # non-trivial affine parameters
        layer.gamma.assign(np.linspace(0.5, 2.0, layer.gamma.shape[0]))
        layer.beta.assign(np.linspace(-1.0, 1.0, layer.beta.shape[0]))
    _spoil_statistics(model)

    assert recompute_batch_norm_statistics(model, images, batch_size=7) == 2

    inputs = keras.ops.convert_to_numpy(
        keras.Sequential(model.layers[1:-1])(images.astype("float32"), training=False)
    )
    for layer in batch_norm_layers(backbone):
        out = keras.ops.convert_to_numpy(keras.Model(backbone.input, layer.output)(inputs))
        flat = out.reshape(-1, out.shape[-1]).astype("float64")
        variance = keras.ops.convert_to_numpy(layer.moving_variance)
        gamma = keras.ops.convert_to_numpy(layer.gamma)
        expected_var = gamma**2 * variance / (variance + layer.epsilon)
        np.testing.assert_allclose(
            flat.mean(axis=0), keras.ops.convert_to_numpy(layer.beta), atol=1e-3
        )
        np.testing.assert_allclose(flat.var(axis=0), expected_var, rtol=1e-3, atol=1e-4)


def test_the_result_does_not_depend_on_the_batch_size():
    images = _images()
    model = _classifier()
    recompute_batch_norm_statistics(model, images, batch_size=40)
    first = [keras.ops.convert_to_numpy(w) for w in model.weights]
    _spoil_statistics(model)
    recompute_batch_norm_statistics(model, images, batch_size=3)
    for a, b in zip(first, model.weights, strict=True):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-5, atol=1e-6)


def test_a_model_without_batch_norm_is_refused_naming_the_setting():
    with pytest.raises(NoBatchNormError, match=r"batch_norm_statistics: 'clean'.*'training'"):
        recompute_batch_norm_statistics(_classifier(batch_norm=False), _images())


def test_the_sample_is_seeded_and_capped():
    x = np.arange(50).reshape(50, 1, 1, 1)
    first = clean_training_sample(x, seed=3, n=10)
    assert first.shape == (10, 1, 1, 1)
    assert np.array_equal(first, clean_training_sample(x, seed=3, n=10))
    assert not np.array_equal(first, clean_training_sample(x, seed=4, n=10))
    assert len(clean_training_sample(x, seed=3, n=100)) == 50


@pytest.mark.slow
def test_fit_keeps_a_checkpoint_with_clean_statistics(binary_data, tmp_path):  # noqa: F811
    options = {"feature_maps": 4, "dense_units": [8, 8], "batch_norm": True}
    augmentation = TrainAugmentConfig(noise_std=40)
    run = xray_run(
        model_options=options, augmentation=augmentation, batch_norm_statistics="clean", epochs=2
    )
    result = fit_one_seed(run, binary_data, tmp_path / "work", seed=0, verbose=0)
    kept = keras.saving.load_model(result.model_path, compile=False)
    kept_stats = [keras.ops.convert_to_numpy(w) for w in kept.weights]

    # a fixed point: recomputing on the same sample changes nothing
    images = clean_training_sample(binary_data.split("train").x, seed=0)
    recompute_batch_norm_statistics(kept, images)
    for a, b in zip(kept_stats, kept.weights, strict=True):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-4, atol=1e-5)

    # and not what the same training keeps without the option
    plain = fit_one_seed(
        run.model_copy(update={"batch_norm_statistics": "training"}),
        binary_data,
        tmp_path / "plain",
        seed=0,
        verbose=0,
    )
    plain_model = keras.saving.load_model(plain.model_path, compile=False)
    means = [w for w in plain_model.weights if "moving_mean" in w.path]
    assert means
    kept_means = [w for w in kept.weights if "moving_mean" in w.path]
    assert any(
        not np.allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
        for a, b in zip(means, kept_means, strict=True)
    )
    assert (tmp_path / "work" / "seed-0" / CHECKPOINT_FILE).is_file()
    assert not list((tmp_path / "work" / "seed-0").glob(".*partial*"))
