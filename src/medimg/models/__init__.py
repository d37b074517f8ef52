"""Model registry: name -> "module:builder".

Kept as strings so that reading params.yaml (every stage does) does not import
Keras; `get_builder` imports the module when a model is built. To add a model,
write its builder and add one line here: the training code does not change.

A builder has the signature
    build(input_shape: tuple[int, int, int], num_classes: int, **model_options) -> keras.Model
and returns an *uncompiled* model whose input is uint8-range pixels (0-255) of
shape (batch, H, W, C) and whose output is one sigmoid unit (num_classes == 2)
or `num_classes` softmax units.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

MODEL_BUILDERS: dict[str, str] = {
    "xray_cnn": "medimg.models.simple_cnn:build_xray_cnn",
    "mri_cnn": "medimg.models.simple_cnn:build_mri_cnn",
}


def get_builder(name: str) -> Callable[..., Any]:
    """Return the builder function registered under `name`."""
    if name not in MODEL_BUILDERS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODEL_BUILDERS)}")
    module_name, func_name = MODEL_BUILDERS[name].split(":")
    return getattr(importlib.import_module(module_name), func_name)
