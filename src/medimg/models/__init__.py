"""Model registry: name -> builder, options schema and expected input range.

Kept free of Keras (builders are "module:function" strings) so that reading
params.yaml, which every stage does, validates model names and `model_options`
without importing Keras. To add a model, write its builder and options schema and
add one entry here: the training code does not change.

The model contract. A builder has the signature

    build(input_shape: tuple[int, int, int], num_classes: int, options) -> keras.Model

where `options` is an instance of the entry's schema (medimg.models.options). It
returns an *uncompiled* functional model named BACKBONE_NAME that takes float pixels
of shape (batch, H, W, C) in the entry's `input_range` (0-1, or 0-255 for networks
that scale their input themselves) and outputs one sigmoid unit (num_classes == 2)
or `num_classes` softmax units. It knows nothing of training: resizing, rescaling
0-255 -> 0-1 and random augmentation are wrapped around it by the training side
(medimg.training.classifier), so that a saved model takes 0-255 pixels.

Layer names follow one convention, which freezing and fine-tuning rely on
(medimg.models.blocks): the new classification head's layers start with "head_"
(the last one is "output"); every other layer's name starts with its block, e.g.
"block3_conv" or EfficientNet's "block6a_expand_conv", "stem_conv", "top_conv".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from medimg.models.options import (
    AlexNetOptions,
    EfficientNetB0Options,
    MriCnnOptions,
    XrayCnnOptions,
)

BACKBONE_NAME = "backbone"
HEAD_PREFIX = "head_"
OUTPUT_LAYER = "output"


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    builder: "module:function" (imported only when the model is built).
    options: the pydantic schema of its `model_options`.
    input_range: "unit" when the backbone takes 0-1 pixels (the training side adds
        Rescaling(1/255)), "pixels" when it takes 0-255 and scales them itself.
    """

    builder: str
    options: type[BaseModel]
    input_range: Literal["unit", "pixels"] = "unit"


MODELS: dict[str, ModelSpec] = {
    "xray_cnn": ModelSpec("medimg.models.simple_cnn:build_xray_cnn", XrayCnnOptions),
    "mri_cnn": ModelSpec("medimg.models.simple_cnn:build_mri_cnn", MriCnnOptions),
    "alexnet": ModelSpec("medimg.models.alexnet:build_alexnet", AlexNetOptions),
    # keras.applications.EfficientNetB0 rescales and normalises 0-255 input itself;
    # a Rescaling(1/255) in front of it would scale twice.
    "efficientnet_b0": ModelSpec(
        "medimg.models.efficientnet:build_efficientnet_b0", EfficientNetB0Options, "pixels"
    ),
}


def get_spec(name: str) -> ModelSpec:
    """The registry entry of model `name`."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


def parse_options(name: str, options: dict[str, Any]) -> BaseModel:
    """Validate `options` against model `name`'s schema (pydantic ValidationError if bad)."""
    return get_spec(name).options.model_validate(options)


def get_builder(name: str) -> Callable[..., Any]:
    """Return the builder function registered under `name`."""
    module_name, func_name = get_spec(name).builder.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def build_backbone(
    name: str, input_shape: tuple[int, int, int], num_classes: int, options: dict[str, Any]
) -> Any:
    """Build model `name` (its options validated first); returns an uncompiled keras.Model."""
    return get_builder(name)(tuple(input_shape), num_classes, parse_options(name, options))
