"""Grad-CAM heat maps: where in the image the evidence for the predicted class lies.

Grad-CAM (Selvaraju et al., 2017): the gradients of the class score with respect to a
convolutional layer's feature maps, averaged over space, weight those maps; their
weighted sum through a ReLU, scaled to [0, 1] and resized to the image, is the heat map.

The target layer is the last layer with a 4-D output (batch, h, w, c) inside the model's
"backbone" (a nested functional model, after the preprocessing layers), or in the model
itself when it has no backbone (the flat models of earlier versions); a layer name given
explicitly overrides the choice.

Unlike models/ and training/, this module touches backend APIs: Keras 3 has no
backend-neutral way to take the gradient of an output with respect to an input (fit()
does it inside each backend's own trainer), so `_gradient_function` picks a small
function per backend (TensorFlow: GradientTape; JAX: jax.grad). Everything else is
keras.ops and runs on either.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from medimg.inference.errors import PredictError

BACKBONE = "backbone"


def _backbone(model: keras.Model) -> keras.Model | None:
    """The nested functional model named "backbone", when the model has one."""
    for layer in model.layers:
        if layer.name == BACKBONE and isinstance(layer, keras.Model):
            return layer
    return None


def _is_4d(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.layers.InputLayer | keras.Model):
        return False
    return len(layer.output.shape) == 4


def find_target_layer(
    model: keras.Model, layer_name: str | None = None
) -> tuple[keras.Model, keras.layers.Layer]:
    """(the model whose graph holds the target layer, the target layer).

    Without `layer_name`: the last layer with a 4-D output inside the backbone, else in
    the model itself. With it: that layer, looked up in the backbone, then the model.
    """
    backbone = _backbone(model)
    graphs = [g for g in (backbone, model) if g is not None]
    if layer_name is not None:
        for graph in graphs:
            if any(layer.name == layer_name for layer in graph.layers):
                layer = graph.get_layer(layer_name)
                if not _is_4d(layer):
                    raise PredictError(
                        f"Grad-CAM layer {layer_name!r} outputs shape {layer.output.shape}; "
                        f"expected (batch, h, w, c); 4-D layers: {_names_4d(graphs[0])}"
                    )
                return graph, layer
        raise PredictError(
            f"Grad-CAM layer {layer_name!r} is not in model {model.name!r}; "
            f"4-D layers: {_names_4d(graphs[0])}"
        )
    candidates = [layer for layer in graphs[0].layers if _is_4d(layer)]
    if not candidates:
        raise PredictError(
            f"model {model.name!r} has no layer with a 4-D (batch, h, w, c) output to "
            "compute Grad-CAM on"
        )
    return graphs[0], candidates[-1]


def _names_4d(graph: keras.Model) -> list[str]:
    return [layer.name for layer in graph.layers if _is_4d(layer)]


def class_scores(proba: keras.KerasTensor, class_index: keras.KerasTensor) -> keras.KerasTensor:
    """The probability of each image's class: (N, K) or one sigmoid unit (N, 1) -> (N,).

    With one sigmoid unit, class 0's probability is 1 - P(class 1), so evidence against
    class 1 counts for class 0.
    """
    class_index = keras.ops.convert_to_tensor(class_index, dtype="int32")
    if proba.shape[-1] == 1:
        positive = proba[:, 0]
        return keras.ops.where(class_index == 1, positive, 1.0 - positive)
    picked = keras.ops.take_along_axis(proba, class_index[:, None], axis=1)
    return picked[:, 0]


# (head: feature maps -> probabilities, feature maps (N, h, w, c), class index (N,))
# -> d sum(class scores) / d feature maps, (N, h, w, c).
GradientFunction = Callable[[keras.Model, object, np.ndarray], object]


def _gradients_tensorflow(head: keras.Model, features: object, class_index: np.ndarray) -> object:
    import tensorflow as tf

    features = tf.convert_to_tensor(features)
    with tf.GradientTape() as tape:
        tape.watch(features)
        total = keras.ops.sum(class_scores(head(features, training=False), class_index))
    return tape.gradient(total, features)


def _gradients_jax(head: keras.Model, features: object, class_index: np.ndarray) -> object:
    import jax

    def total(maps: object) -> object:
        return keras.ops.sum(class_scores(head(maps, training=False), class_index))

    return jax.grad(total)(features)


def _gradient_function() -> GradientFunction:
    backend = keras.backend.backend()
    functions = {"tensorflow": _gradients_tensorflow, "jax": _gradients_jax}
    if backend not in functions:
        raise PredictError(
            f"Grad-CAM supports the Keras backends {sorted(functions)}, not {backend!r}"
        )
    return functions[backend]


def _prefix_model(model: keras.Model, backbone: keras.Model) -> keras.Model:
    """pixels -> the backbone's input: the model's layers before the backbone, in order.

    The model contract makes these a chain (Input -> [resize] -> [rescale] ->
    [augmentation, identity at inference]) ending in the backbone, whose output is the
    model's output; anything else is refused rather than guessed at.
    """
    if model.layers[-1] is not backbone:
        raise PredictError(
            f"model {model.name!r}: Grad-CAM expects {BACKBONE!r} to be the last layer "
            f"(its output the model's output), found {model.layers[-1].name!r}"
        )
    pixels = keras.Input(shape=model.input_shape[1:], name="pixels")
    x = pixels
    for layer in model.layers[:-1]:
        if not isinstance(layer, keras.layers.InputLayer):
            x = layer(x)
    return keras.Model(pixels, x, name="preprocessing")


class GradCam:
    """Grad-CAM for one model; the sub-models are built once, then reused per batch."""

    def __init__(self, model: keras.Model, layer_name: str | None = None) -> None:
        graph, target = find_target_layer(model, layer_name)
        self.layer_name = target.name
        to_maps = keras.Model(graph.inputs, target.output)
        try:
            # A sub-model from an intermediate tensor: Keras traces the graph from the
            # target's output to the output.
            self.head = keras.Model(target.output, graph.output)
        except ValueError as err:
            raise PredictError(
                f"Grad-CAM layer {target.name!r}: the layers after it also read earlier "
                f"layers (a skip connection?), so its maps alone do not give the output ({err})"
            ) from None
        if graph is not model:
            prefix = _prefix_model(model, graph)
            to_maps = keras.Model(prefix.inputs, to_maps(prefix.output))
        self.to_maps = to_maps
        self._gradients = _gradient_function()

    def heat_maps(self, pixels: np.ndarray, class_index: np.ndarray) -> np.ndarray:
        """Heat maps of `class_index` (N,) for images `pixels` (N, H, W, C) uint8 0-255.

        Returns float32 (N, H, W) in [0, 1]; 1 at each image's strongest evidence, all 0
        where no feature map speaks for the class.
        """
        maps = self.to_maps(keras.ops.convert_to_tensor(pixels, "float32"), training=False)
        gradients = self._gradients(self.head, maps, np.asarray(class_index, np.int32))
        weights = keras.ops.mean(gradients, axis=(1, 2))  # (N, c)
        cam = keras.ops.relu(keras.ops.einsum("nhwc,nc->nhw", maps, weights))
        peak = keras.ops.max(cam, axis=(1, 2), keepdims=True)
        cam = keras.ops.where(peak > 0, cam / keras.ops.maximum(peak, 1e-12), 0.0)
        height, width = pixels.shape[1:3]
        resized = keras.ops.image.resize(cam[..., None], (height, width), interpolation="bilinear")
        return np.clip(keras.ops.convert_to_numpy(resized)[..., 0], 0.0, 1.0).astype(np.float32)
