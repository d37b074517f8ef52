"""Every model of the zoo keeps the contract the rest of medimg relies on.

Like scikit-learn's common estimator checks: the tests iterate over the registry
(medimg.models.registry.known_models), so a model added to the zoo is checked with no
test edited, and no list of model names is written here.
"""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
from pydantic import ValidationError

from medimg.models.fine_tuning import feature_blocks, set_trainable_top
from medimg.models.registry import (
    BACKBONE_NAME,
    HEAD_PREFIX,
    OUTPUT_LAYER,
    build_backbone,
    get_spec,
    known_models,
    parse_options,
)
from medimg.training.classifier import assemble_classifier

MODELS = known_models()
# A value no option of any type takes (options are numbers, strings, booleans, lists).
GARBAGE = {"not": "an option value"}


def test_the_zoo_holds_the_thesis_models() -> None:
    assert {"xray_cnn", "mri_cnn", "alexnet", "efficientnet_b0"} <= set(MODELS)


def test_an_unknown_model_names_the_zoo() -> None:
    with pytest.raises(KeyError, match=r"unknown model 'vgg'; allowed: \[.*'xray_cnn'"):
        get_spec("vgg")
    with pytest.raises(KeyError, match="unknown model"):
        get_spec("../config")


@pytest.mark.parametrize("name", MODELS)
def test_reading_a_model_spec_imports_no_keras(name: str) -> None:
    """params.yaml is validated through the registry by every training, evaluation and
    the report: a zoo module may import Keras only inside its builder."""
    script = (
        "import sys\nfrom medimg.models.registry import get_spec, parse_options\n"
        f"spec = get_spec({name!r})\nparse_options({name!r}, spec.tiny_options)\n"
        "assert 'keras' not in sys.modules, 'keras imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("channels", "num_classes"), [(1, 2), (3, 4)])
def test_every_model_keeps_the_contract(name: str, channels: int, num_classes: int) -> None:
    """Named backbone, probabilities out, head and blocks named as declared, batch norm
    as declared, and one training step changes weights."""
    spec = get_spec(name)
    options = parse_options(name, spec.tiny_options)
    keras.utils.set_random_seed(0)
    backbone = build_backbone(name, (32, 32, channels), num_classes, spec.tiny_options)
    assert backbone.name == BACKBONE_NAME
    assert backbone.layers[-1].name == OUTPUT_LAYER
    has_bn = any(isinstance(x, keras.layers.BatchNormalization) for x in backbone.layers)
    assert has_bn == spec.uses_batch_norm(options)
    blocks = spec.blocks(options)
    grouped = feature_blocks(backbone, blocks)  # raises for a layer of no declared block
    assert len(grouped) == len(blocks)
    assert any(layer.name.startswith(HEAD_PREFIX) for layer in backbone.layers)

    model = assemble_classifier(backbone, (32, 32, channels), spec.input_range)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, channels), dtype=np.uint8)
    out = keras.ops.convert_to_numpy(model(x, training=False))
    units = 1 if num_classes == 2 else num_classes
    assert out.shape == (4, units)
    assert np.all((out >= 0) & (out <= 1))
    if units > 1:
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    loss = "binary_crossentropy" if units == 1 else "sparse_categorical_crossentropy"
    model.compile(optimizer="adam", loss=loss, run_eagerly=True)  # no graph tracing: seconds
    y = np.array([0, 1, 0, 1], dtype="float32" if units == 1 else "int32")
    before = [w.copy() for w in model.get_weights()]
    model.train_on_batch(x, y)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


@pytest.mark.parametrize("name", MODELS)
def test_fine_tuning_unfreezes_exactly_the_declared_top_blocks(name: str) -> None:
    spec = get_spec(name)
    blocks = spec.blocks(parse_options(name, spec.tiny_options))
    backbone = build_backbone(name, (32, 32, 3), 4, spec.tiny_options)
    grouped = feature_blocks(backbone, blocks)
    for top in range(len(blocks) + 1):
        set_trainable_top(backbone, top, blocks)
        unfrozen = [
            layer
            for block in grouped[len(grouped) - top :]
            for layer in block
            if not isinstance(layer, keras.layers.BatchNormalization)
        ]
        frozen = [layer for block in grouped[: len(grouped) - top] for layer in block]
        assert all(layer.trainable for layer in unfrozen)
        assert not any(layer.trainable for layer in frozen)
    with pytest.raises(ValueError, match=f"between 0 and the model's {len(blocks)} blocks"):
        set_trainable_top(backbone, len(blocks) + 1, blocks)


@pytest.mark.parametrize("name", MODELS)
def test_options_schema_refuses_unknown_and_ill_typed_options(name: str) -> None:
    schema = get_spec(name).options
    with pytest.raises(ValidationError, match="extra"):
        parse_options(name, {"no_such_option": 1})
    for field in schema.model_fields:
        with pytest.raises(ValidationError, match=field):
            parse_options(name, {field: GARBAGE})
    # A boolean is not a number (strict options, like the run's keys).
    numeric = [f for f, info in schema.model_fields.items() if info.annotation in (int, float)]
    for field in numeric:
        with pytest.raises(ValidationError, match=field):
            parse_options(name, {field: True})


def test_a_layer_outside_the_declared_blocks_is_refused_not_guessed() -> None:
    """MobileNetV3's layers are named "conv", "expanded_conv_3_...": without declared
    blocks, "the top 2 blocks" used to mean two groups picked by a name pattern."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Conv2D(4, 3, name="expanded_conv_1_project")(x)
    x = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(x)
    backbone = keras.Model(inputs, keras.layers.Dense(1, name=OUTPUT_LAYER)(x), name="mobile")
    with pytest.raises(ValueError, match=r"layer 'conv' of 'mobile' belongs to none"):
        set_trainable_top(backbone, 2, ("block1", "block2"))
    with pytest.raises(ValueError, match=r"declared blocks \['block2'\] .* have no layer"):
        feature_blocks(backbone, ("conv", "expanded_conv_1", "block2"))
    grouped = feature_blocks(backbone, ("conv", "expanded_conv_1"))
    assert [[layer.name for layer in block] for block in grouped] == [
        ["conv"],
        ["expanded_conv_1_project"],
    ]
