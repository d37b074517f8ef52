"""Models: the registry contract, shapes, one training step, options, transfer, phases."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from pydantic import ValidationError

from inference_support import BAD_MODEL_FILES, bad_model_file
from medimg.config.runs import FineTuningConfig, RunConfig, TrainAugmentConfig
from medimg.models.applications import WeightsUnavailableError
from medimg.models.fine_tuning import feature_blocks, set_trainable_top
from medimg.models.registry import (
    build_backbone,
    get_spec,
    parse_options,
)
from medimg.models.transfer import TransferError, load_source_model, transfer_weights
from medimg.models.zoo.efficientnet_b0 import IMAGENET_FILE
from medimg.training.classifier import (
    assemble_classifier,
    choose_augmentation_site,
    zoom_factor_for_keras,
)
from medimg.training.fit import build_classifier
from medimg.training.phases import training_phases

AUGMENT = TrainAugmentConfig(rotation_deg=5, zoom_range=(1.0, 1.2), noise_std=20)


def _tiny(name: str) -> dict:
    return get_spec(name).tiny_options


def _pixels(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def test_xray_cnn_has_the_thesis_layers():
    backbone = build_backbone("xray_cnn", (32, 32, 1), 2, {})
    convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    dense = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Dense)]
    assert [c.filters for c in convs] == [32] * 5
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert [d.units for d in dense] == [128, 64, 1]
    assert dense[-1].activation.__name__ == "sigmoid"
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in backbone.layers)


def test_alexnet_has_the_2012_layers():
    backbone = build_backbone("alexnet", (224, 224, 3), 4, {})
    convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [96, 256, 384, 384, 256]
    assert [c.kernel_size for c in convs] == [(11, 11), (5, 5), (3, 3), (3, 3), (3, 3)]
    assert convs[0].strides == (4, 4)
    pools = [layer for layer in backbone.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert len(pools) == 3 and all(p.pool_size == (3, 3) for p in pools)
    dense = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [4096, 4096, 4]
    dropouts = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Dropout)]
    assert [d.rate for d in dropouts] == [0.5, 0.5]
    assert backbone.get_layer("block5_pool").output.shape[1:] == (7, 7, 256)
    with_bn = build_backbone("alexnet", (64, 64, 3), 4, {"batch_norm": True, "width": 0.1})
    assert sum(isinstance(x, keras.layers.BatchNormalization) for x in with_bn.layers) == 5


def test_efficientnet_scales_its_input_once_and_repeats_grey_to_rgb():
    backbone = build_backbone("efficientnet_b0", (32, 32, 1), 2, {"weights": "none"})
    assert backbone.get_layer("stem_gray_to_rgb").output.shape[-1] == 3
    model = assemble_classifier(backbone, (32, 32, 1), get_spec("efficientnet_b0").input_range)
    assert "rescale" not in {layer.name for layer in model.layers}  # Keras's own Rescaling only
    rescalings = [x for x in backbone.layers if isinstance(x, keras.layers.Rescaling)]
    assert len(rescalings) == 1 and rescalings[0].scale == pytest.approx(1 / 255)
    # the small CNNs take 0-1: the wrapper rescales in front of them
    cnn = build_backbone("xray_cnn", (32, 32, 1), 2, {})
    wrapped = assemble_classifier(cnn, (32, 32, 1), get_spec("xray_cnn").input_range)
    assert "rescale" in {layer.name for layer in wrapped.layers}


def test_noise_is_on_the_0_255_scale_whatever_the_backbone_takes():
    x = np.full((64, 32, 32, 1), 128, dtype=np.uint8)
    # noise only: a rotation fills the corners of this flat image with black
    noise = TrainAugmentConfig(noise_std=20)
    for name in ("xray_cnn", "efficientnet_b0"):
        backbone = build_backbone(name, (32, 32, 1), 2, _tiny(name))
        model = assemble_classifier(backbone, (32, 32, 1), get_spec(name).input_range, noise)
        before_backbone = keras.Model(model.input, model.layers[-2].output)  # feeds backbone
        noisy = keras.ops.convert_to_numpy(before_backbone(x, training=True))
        scale = 255.0 if get_spec(name).input_range == "pixels" else 1.0
        assert np.std(noisy * 255.0 / scale) == pytest.approx(20.0, rel=0.05)


def test_resizing_only_when_image_size_differs():
    run = RunConfig(
        dataset="d",
        split_protocol="official",
        model="xray_cnn",
        epochs=1,
        batch_size=2,
        image_size=32,
        model_options=_tiny("xray_cnn"),
    )
    resized = build_classifier(run, (48, 48, 1), 2, augment_in_model=True)
    same = build_classifier(run, (32, 32, 1), 2, augment_in_model=True)
    assert "resize" in [layer.name for layer in resized.layers]
    assert "resize" not in [layer.name for layer in same.layers]
    assert resized.get_layer("resize").output.shape[1:3] == (32, 32)


@pytest.mark.parametrize("augment_in_model", [True, False])
def test_augmentation_only_in_training(augment_in_model):
    keras.utils.set_random_seed(1)
    backbone = build_backbone("mri_cnn", (32, 32, 3), 4, _tiny("mri_cnn"))
    model = assemble_classifier(backbone, (32, 32, 3), "unit", AUGMENT, augment_in_model)
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
        build_backbone("xray_cnn", (32, 32), 2, {})
    with pytest.raises(ValueError, match="num_classes"):
        build_backbone("mri_cnn", (32, 32, 3), 1, {})


# ------------------------------------------------------------------ option schemas


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("alexnet", {"widht": 0.5}, "widht"),
        ("alexnet", {"width": "wide"}, "width"),
        ("mri_cnn", {"dropout": 1.5}, "dropout"),
        ("mri_cnn", {"filters": []}, "filters"),
        ("efficientnet_b0", {"weights": "imagenet21k"}, "weights"),
        ("efficientnet_b0", {"weights": "models:/x@"}, "MLflow model URI"),
        ("alexnet", {"weights": "imagenet"}, "not available for this model"),
    ],
)
def test_option_schemas_reject_bad_options(name, options, message):
    with pytest.raises(ValidationError, match=message):
        parse_options(name, options)


def test_option_schemas_accept_the_documented_weights(tmp_path):
    for weights in (
        "none",
        "imagenet",
        "runs:/abc123/model",
        "models:/medimg-x@champion",
        "models:/medimg-x/3",
        str(tmp_path / "w.h5"),
        str(tmp_path),
    ):
        assert parse_options("efficientnet_b0", {"weights": weights}).weights == weights


# ------------------------------------------------------------------ weights and transfer


@pytest.mark.slow
def test_imagenet_offline_with_an_empty_cache_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(WeightsUnavailableError) as caught:
        build_backbone("efficientnet_b0", (32, 32, 3), 4, {"weights": "imagenet"})
    message = str(caught.value)
    assert "\n" not in message
    assert IMAGENET_FILE in message and str(tmp_path / "keras") in message
    assert "'none'" in message and "local weights file" in message and "MLflow" in message


@pytest.mark.slow
def test_efficientnet_loads_a_local_weights_file_with_keras_loader(tmp_path):
    keras.utils.set_random_seed(3)
    donor = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    donor.save_weights(path)
    backbone = build_backbone("efficientnet_b0", (32, 32, 3), 4, {"weights": str(path)})
    for name in ("stem_conv", "block6a_expand_conv", "top_conv"):
        for a, b in zip(
            donor.get_layer(name).get_weights(), backbone.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)


def test_transfer_copies_feature_layers_not_the_head_and_adapts_grey_kernels(tmp_path):
    keras.utils.set_random_seed(1)
    xray = build_backbone("alexnet", (32, 32, 1), 2, {"width": 0.05})
    source = assemble_classifier(xray, (32, 32, 1), "unit", name="alexnet")
    source.save(tmp_path / "model.keras")
    keras.utils.set_random_seed(2)
    mri = build_backbone("alexnet", (32, 32, 3), 4, {"width": 0.05})
    head_before = mri.get_layer("output").get_weights()
    report = transfer_weights(load_source_model(tmp_path), mri, str(tmp_path))

    assert report.adapted == ["block1_conv"]  # 1 -> 3 input channels
    assert {"block2_conv", "block5_conv", "head_dense1"} <= set(report.copied) | set(report.skipped)
    for name in ("block2_conv", "block3_conv", "block4_conv", "block5_conv"):
        for a, b in zip(
            xray.get_layer(name).get_weights(), mri.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    grey = xray.get_layer("block1_conv").get_weights()[0]
    rgb = mri.get_layer("block1_conv").get_weights()[0]
    np.testing.assert_allclose(rgb.sum(axis=2, keepdims=True), grey, rtol=1e-6)
    assert "output" in report.skipped  # the new task's head is never copied
    for a, b in zip(head_before, mri.get_layer("output").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_transfer_from_an_unrelated_model_fails(tmp_path):
    other = build_backbone("mri_cnn", (32, 32, 3), 4, _tiny("mri_cnn"))
    assemble_classifier(other, (32, 32, 3), "unit").save(tmp_path / "model.keras")
    target = build_backbone("alexnet", (32, 32, 3), 4, {"width": 0.05})
    with pytest.raises(TransferError, match="no layer of it fits"):
        transfer_weights(load_source_model(tmp_path), target, str(tmp_path))
    with pytest.raises(TransferError, match="no saved model"):
        load_source_model(tmp_path / "missing")


@pytest.mark.parametrize("kind", BAD_MODEL_FILES)
def test_a_hostile_or_corrupt_source_model_is_one_line_naming_it(tmp_path, kind):
    good = tmp_path / "model.keras"
    assemble_classifier(
        build_backbone("alexnet", (32, 32, 1), 2, {"width": 0.05}), (32, 32, 1), "unit"
    ).save(good)
    marker = tmp_path / "the-config-ran"
    given = bad_model_file(good, kind, tmp_path / "given.keras", marker)
    with pytest.raises(TransferError) as err:
        load_source_model(given)
    assert str(err.value).startswith(f"{given}: not a ")
    assert "\n" not in str(err.value) and not marker.exists()


def test_a_corrupt_weights_file_is_one_line_naming_it(tmp_path):
    given = tmp_path / "efficientnetb0_notop.h5"
    given.write_bytes(b"not an HDF5 file")
    with pytest.raises(WeightsUnavailableError) as err:
        build_backbone("efficientnet_b0", (32, 32, 3), 4, {"weights": str(given)})
    message = str(err.value)
    assert message.startswith(f"model_options.weights = {str(given)!r}: not a loadable")
    assert "\n" not in message


@pytest.mark.slow
def test_a_run_seeded_from_a_saved_model_starts_from_its_weights(tmp_path):
    keras.utils.set_random_seed(5)
    donor = build_backbone("efficientnet_b0", (32, 32, 1), 2, {"weights": "none"})
    assemble_classifier(donor, (32, 32, 1), "pixels").save(tmp_path / "model.keras")
    run = RunConfig(
        dataset="d",
        split_protocol="official",
        model="efficientnet_b0",
        epochs=1,
        batch_size=2,
        model_options={"weights": str(tmp_path)},
    )
    model = build_classifier(run, (32, 32, 3), 4, augment_in_model=True)
    built = model.get_layer("backbone")
    for name in ("stem_conv", "block7a_project_conv", "top_conv"):
        for a, b in zip(
            donor.get_layer(name).get_weights(), built.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ two-phase fine-tuning


def test_frozen_phase_trains_only_the_head_with_batch_norm_in_inference_mode():
    backbone = build_backbone("efficientnet_b0", (32, 32, 3), 4, {"weights": "none"})
    blocks = get_spec("efficientnet_b0").blocks(parse_options("efficientnet_b0", {}))
    set_trainable_top(backbone, 0, blocks)
    trainable = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    assert trainable == {"output"}
    set_trainable_top(backbone, 2, blocks)
    trainable = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    grouped = feature_blocks(backbone, blocks)
    top_two = {layer.name for block in grouped[-2:] for layer in block}
    assert trainable == {"output"} | {
        name
        for name in top_two
        if not isinstance(backbone.get_layer(name), keras.layers.BatchNormalization)
    }
    assert [block[0].name for block in grouped[-2:]] == ["block7a_expand_conv", "top_conv"]
    assert not any(
        layer.trainable
        for layer in backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    set_trainable_top(backbone, None, blocks)
    assert all(layer.trainable for layer in backbone.layers)


def test_training_phases_follow_fine_tuning():
    plain = RunConfig(
        dataset="d",
        split_protocol="official",
        model="xray_cnn",
        epochs=5,
        batch_size=2,
        learning_rate=0.01,
    )
    (only,) = training_phases(plain)
    assert (only.first_epoch, only.end_epoch, only.learning_rate) == (0, 5, 0.01)
    assert only.trainable_top_blocks is None
    tuned = plain.model_copy(
        update={
            "fine_tuning": FineTuningConfig(
                frozen_epochs=2, unfreeze_top_blocks=3, learning_rate=1e-4
            )
        }
    )
    frozen, fine = training_phases(tuned)
    assert (frozen.first_epoch, frozen.end_epoch, frozen.trainable_top_blocks) == (0, 2, 0)
    assert frozen.learning_rate == 0.01
    assert (fine.first_epoch, fine.end_epoch, fine.trainable_top_blocks) == (2, 5, 3)
    assert fine.learning_rate == 1e-4


@pytest.mark.slow
def test_a_run_seeded_from_a_registered_mlflow_model_starts_from_its_weights(tmp_path, monkeypatch):
    """The thesis's future work: the X-ray model's layers as the MRI model's starting point,
    given as `models:/<name>@<alias>` (downloaded with MLflow's own client)."""
    from inference_support import log_and_register, save_model_folder
    from medimg.training.train_stage import resolve_initial_weights

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    keras.utils.set_random_seed(7)
    xray = build_backbone("alexnet", (32, 32, 1), 2, {"width": 0.05})
    folder = save_model_folder(
        tmp_path / "xray" / "seed-0",
        assemble_classifier(xray, (32, 32, 1), "unit", name="alexnet"),
        ["NORMAL", "PNEUMONIA"],
        size=32,
    )
    log_and_register(folder, "medimg-chest_xray")
    run = RunConfig(
        dataset="d",
        split_protocol="pooled",
        model="alexnet",
        epochs=1,
        batch_size=2,
        model_options={"width": 0.05, "weights": "models:/medimg-chest_xray@champion"},
    )
    local = resolve_initial_weights(run, tmp_path / "download")
    assert (Path(local.model_options["weights"]) / "model.keras").is_file()
    again = resolve_initial_weights(run, tmp_path / "download")  # downloaded once
    assert again.model_options["weights"] == local.model_options["weights"]
    mri = build_classifier(local, (32, 32, 3), 4, augment_in_model=True).get_layer("backbone")
    for name in ("block2_conv", "block3_conv", "block5_conv"):  # the head is the new task's
        for a, b in zip(
            xray.get_layer(name).get_weights(), mri.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    grey = xray.get_layer("block1_conv").get_weights()[0]
    np.testing.assert_allclose(
        mri.get_layer("block1_conv").get_weights()[0].sum(axis=2, keepdims=True), grey, rtol=1e-6
    )
