"""The model registry: a model named X is the module medimg.models.zoo.X and its `MODEL`.

Adding a model is one module and one params.yaml entry (docs/design.md, "Add a
model"): `src/medimg/models/zoo/<name>.py` defines its options schema, its builder
and `MODEL = ModelSpec(...)`; a run names it (`runs.<r>.model: <name>`). Nothing
else lists models, so nothing else changes, and dvc.yaml makes each run's train
stage depend on its own model's module only.

Zoo modules import Keras inside their builder, never at the top: reading params.yaml
(every training, evaluation and the report do) validates model names and
`model_options` through this registry without importing Keras.

The model contract. `build(input_shape, num_classes, options)` returns an
*uncompiled* functional model named BACKBONE_NAME that takes float pixels of shape
(batch, H, W, C) in `input_range` (0-1, or 0-255 for networks that scale their input
themselves) and outputs one sigmoid unit (num_classes == 2) or `num_classes` softmax
units. It knows nothing of training: resizing, rescaling 0-255 -> 0-1 and random
augmentation are wrapped around it (medimg.training.classifier), so a saved model
takes 0-255 pixels.

Layer names follow one convention, which freezing, fine-tuning and transfer rely on
(medimg.models.fine_tuning): the new head's layers start with HEAD_PREFIX (the last
one is OUTPUT_LAYER); every other layer with trainable weights starts with one of the
blocks the spec declares (`blocks(options)`, bottom to top), e.g. "block3_conv" of
block "block3", or EfficientNet's "block6a_expand_conv" of "block6". A test builds
every registered model and checks it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

BACKBONE_NAME = "backbone"
HEAD_PREFIX = "head_"
OUTPUT_LAYER = "output"
ZOO_PACKAGE = "medimg.models.zoo"
_MODEL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class ModelSpec:
    """Everything the rest of medimg needs to know about one model.

    options: the pydantic schema of its `model_options` (extra keys forbidden).
    build: (input_shape (H, W, C), num_classes, options instance) -> uncompiled keras.Model.
    blocks: options -> the names of its feature blocks, bottom (input side) first: the
        layer-name prefixes that `fine_tuning.unfreeze_top_blocks` counts.
    uses_batch_norm: options -> whether it has BatchNormalization layers (the run's
        `batch_norm_statistics: clean` needs some).
    input_range: "unit" when it takes 0-1 pixels (the training side adds Rescaling(1/255)),
        "pixels" when it takes 0-255 and scales them itself.
    tiny_options: options giving a network small enough to build and train a step in
        seconds, with every kind of layer the model has (the registry's common tests).
    """

    options: type[BaseModel]
    build: Callable[[tuple[int, int, int], int, Any], Any]
    blocks: Callable[[Any], tuple[str, ...]]
    uses_batch_norm: Callable[[Any], bool]
    input_range: Literal["unit", "pixels"] = "unit"
    tiny_options: dict[str, Any] = field(default_factory=dict)


def known_models() -> list[str]:
    """The names of every model in the zoo (read from its module names; nothing imported)."""
    zoo = importlib.import_module(ZOO_PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(zoo.__path__) if not m.name.startswith("_"))


@functools.cache
def get_spec(name: str) -> ModelSpec:
    """The ModelSpec of model `name`; KeyError naming the known models when there is none."""
    module_name = f"{ZOO_PACKAGE}.{name}"
    if (
        not isinstance(name, str)
        or not _MODEL_NAME.match(name)
        or importlib.util.find_spec(module_name) is None
    ):
        raise KeyError(f"unknown model {name!r}; allowed: {known_models()}")
    spec = getattr(importlib.import_module(module_name), "MODEL", None)
    if not isinstance(spec, ModelSpec):
        raise KeyError(
            f"model {name!r}: {module_name} defines no MODEL = ModelSpec(...) (docs/design.md, "
            "'Add a model')"
        )
    return spec


def parse_options(name: str, options: dict[str, Any]) -> BaseModel:
    """Validate `options` against model `name`'s schema (pydantic ValidationError if bad)."""
    return get_spec(name).options.model_validate(options)


def build_backbone(
    name: str, input_shape: tuple[int, int, int], num_classes: int, options: dict[str, Any]
) -> Any:
    """Build model `name` (its options validated first); returns an uncompiled keras.Model."""
    return get_spec(name).build(tuple(input_shape), num_classes, parse_options(name, options))
