"""The augment stage's output read back: data/prepared/<dataset>/<protocol>/, memory-mapped.

`load_prepared` memory-maps {train,val,test}_{x,y}.npy, so a dataset larger than
memory trains, and worker processes share the pages, and checks them against
meta.json. No Keras here: the evaluate stage and the report read prepared data
without paying for a deep-learning framework's import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medimg.data.manifest import SPLITS
from medimg.errors import UserError

REQUIRED_META_KEYS = ("dataset", "classes", "channels", "image_size")


class PreparedDataError(UserError, ValueError):
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
