"""Which layers of a backbone form its head and which its feature blocks.

Relies on the layer-naming convention of medimg.models (head layers start with
"head_" or are "output"; other layers start with their block). Used to freeze a
pretrained feature extractor and to unfreeze its top blocks for fine-tuning.
"""

from __future__ import annotations

import re

import keras

from medimg.models import HEAD_PREFIX, OUTPUT_LAYER

# "block6a_expand_conv" -> "block6", "block3_conv" -> "block3", "stem_conv" -> "stem".
_BLOCK = re.compile(r"^(block\d+|[a-z]+\d*)")


def is_head(layer: keras.layers.Layer) -> bool:
    return layer.name.startswith(HEAD_PREFIX) or layer.name == OUTPUT_LAYER


def block_of(layer: keras.layers.Layer) -> str:
    """The block a feature-extractor layer belongs to, from its name."""
    match = _BLOCK.match(layer.name)
    return match.group(1) if match else layer.name


def feature_blocks(backbone: keras.Model) -> list[list[keras.layers.Layer]]:
    """The backbone's weighted non-head layers grouped by block, bottom (input side) first."""
    blocks: dict[str, list[keras.layers.Layer]] = {}
    for layer in backbone.layers:
        if is_head(layer) or not layer.weights:
            continue
        blocks.setdefault(block_of(layer), []).append(layer)
    return list(blocks.values())


def set_trainable_top(backbone: keras.Model, top_blocks: int | None) -> None:
    """Freeze the feature extractor except its `top_blocks` last blocks; the head trains.

    top_blocks: None trains everything (batch normalisation included). An integer
    freezes every feature block below the top `top_blocks` and keeps every
    BatchNormalization layer frozen, so it runs in inference mode with its
    pretrained statistics (Keras's fine-tuning guide: updating them from small
    batches of a new domain wrecks what the frozen layers learnt).
    """
    backbone.trainable = True
    if top_blocks is None:
        for layer in backbone.layers:
            layer.trainable = True
        return
    if top_blocks < 0:
        raise ValueError(f"top_blocks must be >= 0 or None, got {top_blocks}")
    blocks = feature_blocks(backbone)
    unfrozen = {id(layer) for block in blocks[len(blocks) - top_blocks :] for layer in block}
    for layer in backbone.layers:
        if is_head(layer):
            layer.trainable = True
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        else:
            layer.trainable = id(layer) in unfrozen if top_blocks else False
