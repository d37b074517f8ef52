"""Training input pipeline: the augment stage's arrays, fed as batches without TensorFlow.

`load_prepared` memory-maps data/prepared/<dataset>/<split>_{x,y}.npy, so a
dataset larger than memory trains, and worker processes share the pages.
`ArrayBatches` is a `keras.utils.PyDataset`, which every Keras backend accepts
(TensorFlow's data API would tie training to TensorFlow; the GPU machine has only JAX).
Pixels stay uint8 all the way to the model, which rescales them: a quarter of
the bytes of float32 to copy and to send to an accelerator.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medimg.config import TrainAugmentConfig

SPLITS = ("train", "val", "test")
REQUIRED_META_KEYS = ("dataset", "classes", "channels", "image_size")

# Separate random streams per purpose, so that adding augmentation does not change
# the shuffle order of a seed.
_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1

# images (N, H, W, C) uint8, rng -> images (N, H, W, C) uint8
BatchAugment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class PreparedDataError(ValueError):
    """A file of the augment stage's output does not match its contract."""


class PreparedDataMissing(PreparedDataError, FileNotFoundError):
    """The augment stage's output is not there: it has to run first."""


@dataclass(frozen=True)
class SplitArrays:
    """One split: x (N, H, W, C) uint8 and y (N,) int64 class index, memory-mapped."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class PreparedData:
    """The augment stage's output for one dataset (data/prepared/<dataset>/)."""

    directory: Path
    dataset: str
    classes: list[str]
    channels: int
    image_size: int
    meta: dict[str, Any]
    splits: dict[str, SplitArrays] = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the stored images."""
        return (self.image_size, self.image_size, self.channels)

    def split(self, name: str) -> SplitArrays:
        if name not in self.splits:
            raise KeyError(f"unknown split {name!r}; {self.directory} has {sorted(self.splits)}")
        return self.splits[name]


def _dataset_of(directory: Path) -> str:
    """The dataset of a prepared folder, data/prepared/<dataset>/<protocol>."""
    return directory.parent.name


def _missing(path: Path, dataset: str) -> PreparedDataMissing:
    return PreparedDataMissing(
        f"{path} not found; run the augment stage first: dvc repro augment@{dataset}"
    )


def _read_meta(directory: Path) -> dict[str, Any]:
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise _missing(meta_path, _dataset_of(directory))
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise PreparedDataError(f"{meta_path}: not valid JSON: {err}") from None
    missing = [key for key in REQUIRED_META_KEYS if key not in meta]
    if missing:
        raise PreparedDataError(f"{meta_path}: missing keys {missing}")
    return meta


def _load_split(directory: Path, split: str, meta: dict[str, Any]) -> SplitArrays:
    x_path, y_path = directory / f"{split}_x.npy", directory / f"{split}_y.npy"
    for path in (x_path, y_path):
        if not path.is_file():
            raise _missing(path, meta["dataset"])
    x = np.load(x_path, mmap_mode="r")
    y = np.load(y_path, mmap_mode="r")
    expected = (meta["image_size"], meta["image_size"], meta["channels"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != expected:
        raise PreparedDataError(
            f"{x_path}: expected uint8 of shape (N, {', '.join(map(str, expected))}) "
            f"(from meta.json), got {x.dtype} {x.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
        raise PreparedDataError(
            f"{y_path}: expected integer labels of shape ({len(x)},), got {y.dtype} {y.shape}"
        )
    if len(y) and (y.min() < 0 or y.max() >= len(meta["classes"])):
        raise PreparedDataError(
            f"{y_path}: labels must be in [0, {len(meta['classes'])}) "
            f"(classes {meta['classes']}), got {int(y.min())}..{int(y.max())}"
        )
    return SplitArrays(x=x, y=y)


def load_prepared(prepared_dir: Path) -> PreparedData:
    """Memory-map the train, val and test arrays of `prepared_dir` and read its meta.json.

    Raises FileNotFoundError naming a missing file and the stage that writes it,
    PreparedDataError naming a malformed one.
    """
    directory = Path(prepared_dir)
    if not directory.is_dir():
        raise _missing(directory, _dataset_of(directory))
    meta = _read_meta(directory)
    splits = {split: _load_split(directory, split, meta) for split in SPLITS}
    return PreparedData(
        directory=directory,
        dataset=str(meta["dataset"]),
        classes=list(meta["classes"]),
        channels=int(meta["channels"]),
        image_size=int(meta["image_size"]),
        meta=meta,
        splits=splits,
    )


def loader_augmentation(cfg: TrainAugmentConfig, geometric: bool) -> BatchAugment | None:
    """The random augmentation the loader applies on the CPU, for ArrayBatches(augment=...).

    geometric: the loader also rotates and zooms (False when the model does).
    Intensity augmentation (brightness, contrast, gamma) always runs here: it is
    element-wise numpy, cheap on every backend. Noise is left out on purpose: it
    stays in the model (GaussianNoise). None when there is nothing to do. A
    `functools.partial` of a module-level function, so that it pickles into workers.
    """
    if not geometric and not cfg.intensity:
        return None
    return functools.partial(
        augment_in_loader,
        rotation_deg=cfg.rotation_deg if geometric else 0.0,
        zoom_range=cfg.zoom_range if geometric else (1.0, 1.0),
        brightness=cfg.brightness,
        contrast=cfg.contrast,
        gamma=cfg.gamma,
    )


def augment_in_loader(
    images: np.ndarray,
    rng: np.random.Generator,
    rotation_deg: float,
    zoom_range: tuple[float, float],
    brightness: float,
    contrast: float,
    gamma: float,
) -> np.ndarray:
    """Rotation and zoom, then brightness, contrast and gamma: (N, H, W, C) uint8 -> same."""
    from medimg.data.augmentation import augment_batch
    from medimg.data.intensity import random_intensity

    if rotation_deg > 0 or tuple(zoom_range) != (1.0, 1.0):
        images = augment_batch(images, rng, rotation_deg, zoom_range, noise_std=0.0)
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
