"""Which layers of a backbone form its head and which its feature blocks; freezing them.

Relies on the layer-naming convention of medimg.models.registry: head layers start
with HEAD_PREFIX or are OUTPUT_LAYER; every other layer with trainable weights starts
with one of the blocks its model declares (ModelSpec.blocks). A layer that belongs to
no declared block is an error, not a block of its own: otherwise a new architecture
with other names (MobileNetV3's "conv", "expanded_conv_3") would make "the top 2
blocks" quietly mean something else.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from medimg.models.registry import HEAD_PREFIX, OUTPUT_LAYER


def is_head(layer: keras.layers.Layer) -> bool:
    return layer.name.startswith(HEAD_PREFIX) or layer.name == OUTPUT_LAYER


def block_of(layer_name: str, blocks: Sequence[str]) -> str | None:
    """The declared block `layer_name` starts with, None if none.

    A block name must be followed by the end or a non-digit: "block1" owns
    "block1_conv" and EfficientNet's "block1a_dwconv", not "block10_conv". The longest
    match wins, so blocks may share a prefix.
    """
    owners = [
        block
        for block in blocks
        if layer_name.startswith(block)
        and (len(layer_name) == len(block) or not layer_name[len(block)].isdigit())
    ]
    return max(owners, key=len) if owners else None


def feature_blocks(backbone: keras.Model, blocks: Sequence[str]) -> list[list[keras.layers.Layer]]:
    """The backbone's layers with weights outside the head, one list per declared block,
    bottom (input side) first.

    Raises ValueError naming a layer that belongs to no declared block, or a declared
    block that has no layer.
    """
    grouped: dict[str, list[keras.layers.Layer]] = {block: [] for block in blocks}
    for layer in backbone.layers:
        if is_head(layer) or not layer.weights:
            continue
        block = block_of(layer.name, blocks)
        if block is None:
            raise ValueError(
                f"layer {layer.name!r} of {backbone.name!r} belongs to none of its model's "
                f"declared blocks {list(blocks)}: name it '<block>_...' or declare its block "
                "in the model's ModelSpec.blocks (docs/design.md, 'Add a model')"
            )
        grouped[block].append(layer)
    empty = [block for block, layers in grouped.items() if not layers]
    if empty:
        raise ValueError(f"declared blocks {empty} of {backbone.name!r} have no layer with weights")
    return list(grouped.values())


def set_trainable_top(backbone: keras.Model, top_blocks: int | None, blocks: Sequence[str]) -> None:
    """Freeze the feature extractor except its `top_blocks` last blocks; the head trains.

    top_blocks: None trains everything (batch normalisation included). An integer
    freezes every feature block below the top `top_blocks` and keeps every
    BatchNormalization layer frozen, so it runs in inference mode with its
    pretrained statistics (Keras's fine-tuning guide: updating them from small
    batches of a new domain wrecks what the frozen layers learnt).
    blocks: the model's declared blocks (ModelSpec.blocks), bottom first.
    """
    backbone.trainable = True
    if top_blocks is None:
        for layer in backbone.layers:
            layer.trainable = True
        return
    grouped = feature_blocks(backbone, blocks)
    if not 0 <= top_blocks <= len(grouped):
        raise ValueError(
            f"top_blocks must be between 0 and the model's {len(grouped)} blocks "
            f"({list(blocks)}), or None; got {top_blocks}"
        )
    unfrozen = {id(layer) for block in grouped[len(grouped) - top_blocks :] for layer in block}
    for layer in backbone.layers:
        if is_head(layer):
            layer.trainable = True
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        else:
            layer.trainable = id(layer) in unfrozen
