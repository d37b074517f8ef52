"""Grad-CAM on models whose evidence is known by construction (TensorFlow backend).

The backbone's first layer is a hand-set 1x1 convolution: feature map 0 is the red
channel, map 1 the green one. The image has a red square top-left and a green square
bottom-right, equally bright. The output layer reads only one of the two maps, so only
that square matters to the prediction, and the heat map must peak there and stay cold
on the other one.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medimg.inference.errors import PredictError
from medimg.inference.gradcam import GradCam, find_target_layer

SIZE = 32
RED = (slice(2, 10), slice(2, 10))  # rows, columns
GREEN = (slice(20, 28), slice(20, 28))


def _image() -> np.ndarray:
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[(*RED, 0)] = 255
    image[(*GREEN, 1)] = 255
    return image


def _features(x: keras.KerasTensor, output_weights: np.ndarray) -> keras.KerasTensor:
    """1x1 conv selecting red and green -> 2x2 max pool -> global average -> Dense."""
    select = keras.layers.Conv2D(2, 1, use_bias=False, activation="relu", name="select")
    x = select(x)
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, 0, 0] = kernel[0, 0, 1, 1] = 1.0
    select.set_weights([kernel])
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    units = output_weights.shape[1]
    output = keras.layers.Dense(
        units, activation="sigmoid" if units == 1 else "softmax", name="output"
    )
    y = output(x)
    output.set_weights([output_weights.astype(np.float32), np.zeros(units, np.float32)])
    return y


def _model(output_weights: np.ndarray, nested: bool) -> keras.Model:
    pixels = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(pixels)
    if not nested:
        return keras.Model(pixels, _features(x, output_weights), name="flat")
    inner = keras.Input((SIZE, SIZE, 3))
    backbone = keras.Model(inner, _features(inner, output_weights), name="backbone")
    return keras.Model(pixels, backbone(x), name="nested")


# Output weights (feature maps x units) and the square that must light up.
CASES = {
    # sigmoid reads red: P(class 1) ~ 0.78, predicted class 1, evidence in red.
    "sigmoid_red": (np.array([[20.0], [0.0]]), 1, RED, GREEN),
    # sigmoid against green: P(class 1) ~ 0.22, predicted class 0, whose evidence is green.
    "sigmoid_against_green": (np.array([[0.0], [-20.0]]), 0, GREEN, RED),
    # softmax, class 1 reads red.
    "softmax_red": (np.array([[0.0, 20.0, 0.0], [0.0, 0.0, 0.0]]), 1, RED, GREEN),
}


@pytest.mark.parametrize("nested", [True, False], ids=["backbone", "flat"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_heat_map_peaks_where_the_evidence_is(case: str, nested: bool):
    weights, expected_class, hot, cold = CASES[case]
    model = _model(weights, nested)
    image = _image()[None]
    proba = model.predict(image, verbose=0)
    predicted = int(proba[0, 0] > 0.5) if proba.shape[1] == 1 else int(np.argmax(proba[0]))
    assert predicted == expected_class

    explainer = GradCam(model)
    assert explainer.layer_name == "pool"  # the last 4-D layer, before the global pooling
    heat = explainer.heat_maps(image, np.array([predicted]))[0]
    assert heat.shape == (SIZE, SIZE)
    assert heat.max() == pytest.approx(1.0)
    row, column = np.unravel_index(np.argmax(heat), heat.shape)
    assert hot[0].start <= row < hot[0].stop and hot[1].start <= column < hot[1].stop
    assert heat[hot].mean() > 0.5
    assert heat[cold].max() < 0.05


def test_an_explicit_layer_and_a_batch_of_different_classes():
    model = _model(CASES["sigmoid_red"][0], nested=True)
    red_only = _image()
    red_only[..., 1] = 0
    green_only = _image()
    green_only[..., 0] = 0
    explainer = GradCam(model, layer_name="select")  # full resolution, before the pooling
    assert explainer.layer_name == "select"
    heat = explainer.heat_maps(np.stack([red_only, _image()]), np.array([1, 1]))
    assert heat[0][RED].min() > 0.9 and heat[0][GREEN].max() < 0.05
    np.testing.assert_allclose(heat[1], heat[0], atol=1e-5)  # green never counts
    # No evidence for class 1 at all (no red): an all-zero map, not noise scaled up.
    assert not GradCam(model).heat_maps(green_only[None], np.array([1])).any()


def test_target_layer_is_searched_in_the_backbone_then_the_model():
    model = _model(CASES["sigmoid_red"][0], nested=True)
    graph, layer = find_target_layer(model)
    assert (graph.name, layer.name) == ("backbone", "pool")
    graph, layer = find_target_layer(model, "rescale")  # an outer layer, named explicitly
    assert (graph.name, layer.name) == ("nested", "rescale")
    with pytest.raises(PredictError, match=r"'nope' is not in model 'nested'.*'select', 'pool'"):
        find_target_layer(model, "nope")
    with pytest.raises(PredictError, match=r"'global_pool' outputs shape \(None, 2\)"):
        find_target_layer(model, "global_pool")
