"""Training input pipeline: the augment stage's arrays, fed as batches without TensorFlow.

`ArrayBatches` is a `keras.utils.PyDataset` over the memory-mapped arrays of
`medimg.data.prepared`, which every Keras backend accepts (TensorFlow's data
API would tie training to TensorFlow; the GPU machine has only JAX). Pixels stay
uint8 all the way to the model, which rescales them: a quarter of the bytes of
float32 to copy and to send to an accelerator.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import keras
import numpy as np

from medimg.config.runs import TrainAugmentConfig

# Separate random streams per purpose, so that adding augmentation does not change
# the shuffle order of a seed.
_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1

# images (N, H, W, C) uint8, rng -> images (N, H, W, C) uint8
BatchAugment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def loader_augmentation(cfg: TrainAugmentConfig, geometric: bool) -> BatchAugment | None:
    """The random augmentation the loader applies on the CPU, for ArrayBatches(augment=...).

    geometric: the loader also rotates and zooms (False when the model does).
    Black frames and intensity augmentation (brightness, contrast, gamma) always run
    here: they are numpy on whole arrays, cheap on every backend. Noise is left out on
    purpose: it stays in the model (GaussianNoise). None when there is nothing to do.
    A `functools.partial` of a module-level function, so that it pickles into workers.
    """
    if not geometric and not cfg.intensity and not cfg.frames:
        return None
    return functools.partial(
        augment_in_loader,
        rotation_deg=cfg.rotation_deg if geometric else 0.0,
        zoom_range=cfg.zoom_range if geometric else (1.0, 1.0),
        brightness=cfg.brightness,
        contrast=cfg.contrast,
        gamma=cfg.gamma,
        frame_probability=cfg.frame_probability,
        frame_max_fraction=cfg.frame_max_fraction,
    )


def augment_in_loader(
    images: np.ndarray,
    rng: np.random.Generator,
    rotation_deg: float,
    zoom_range: tuple[float, float],
    brightness: float,
    contrast: float,
    gamma: float,
    frame_probability: float,
    frame_max_fraction: float,
) -> np.ndarray:
    """Rotation and zoom, black frames, then brightness, contrast and gamma:
    (N, H, W, C) uint8 -> same. Each step is skipped when it is off, so that turning
    one on does not change the random numbers of the steps before it."""
    from medimg.data.augmentation import augment_batch, random_frames
    from medimg.data.intensity import random_intensity

    if rotation_deg > 0 or tuple(zoom_range) != (1.0, 1.0):
        images = augment_batch(images, rng, rotation_deg, zoom_range, noise_std=0.0)
    if frame_probability > 0:
        images = random_frames(images, rng, frame_probability, frame_max_fraction)
    return random_intensity(images, rng, brightness, contrast, gamma)


class ArrayBatches(keras.utils.PyDataset):
    """Batches (x, y) from (memory-mapped) arrays, reshuffled every epoch.

    x: (batch, H, W, C) uint8 (the model rescales). y: (batch,) float32 when
    `num_classes` == 2 (sigmoid output, binary cross-entropy), else (batch,) int32
    class indices (sparse categorical cross-entropy). The last batch may be smaller,
    so every row is used exactly once per epoch.

    Every random choice derives from (`seed`, epoch[, batch index]): the shuffle
    order and the augmentation of a batch are the same whatever the number of
    workers or the order in which they fetch batches. Keras calls `on_epoch_end`
    in the main process before it starts the next epoch's workers.

    Args:
        x: (N, H, W, C) uint8. y: (N,) integer class indices.
        batch_size: rows per batch.
        num_classes: number of classes (decides the y dtype).
        shuffle: reshuffle the rows every epoch (training); False keeps the file order.
        seed: seed of the shuffle and augmentation streams.
        augment: optional (images, rng) -> images applied per batch (see loader_augmentation).
        first_epoch: epoch number of the first epoch served (a resumed training
            continues with the order and augmentation an uninterrupted one would use).
        workers, use_multiprocessing, max_queue_size: as keras.utils.PyDataset.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        num_classes: int,
        *,
        shuffle: bool,
        seed: int = 0,
        augment: BatchAugment | None = None,
        first_epoch: int = 0,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ) -> None:
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        if x.ndim != 4 or x.dtype != np.uint8:
            raise ValueError(f"x must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
        if y.shape != (len(x),):
            raise ValueError(f"y must have shape ({len(x)},) to match x, got {y.shape}")
        if len(x) == 0:
            raise ValueError("x is empty: no rows to batch")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        self.epoch = first_epoch
        self._y_dtype = np.float32 if num_classes == 2 else np.int32
        self._order = self._epoch_order()

    def _epoch_order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.x))
        return np.random.default_rng([self.seed, _SHUFFLE_STREAM, self.epoch]).permutation(
            len(self.x)
        )

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range [0, {len(self)})")
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        # Sorted rows read the memory map front to back; the order inside a batch
        # does not matter to a gradient step.
        rows = np.sort(rows)
        x = np.asarray(self.x[rows])
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, self.epoch, index])
            x = self.augment(x, rng)
        return x, self.y[rows].astype(self._y_dtype)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._epoch_order()
