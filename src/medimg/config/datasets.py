"""`datasets.<name>` of params.yaml: what the data stages (fetch, split, augment) read.

Validated on its own (`load_dataset`), so that the data stages depend on this module
and the loading code only: editing a run's or a model's schema does not re-run them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from medimg.config.base import (
    PARAMS_FILE,
    Fraction,
    NotBool,
    ParamsError,
    Seed,
    StrictModel,
    ZoomRange,
    load_raw,
    section,
    validate,
)

# Below this many pixels on the shorter side an image holds too little to classify (a
# thumbnail, an icon, a 1 x 1 placeholder): fetch refuses it, and predict by default.
MIN_IMAGE_SIZE = 32


class FetchConfig(StrictModel):
    """Where a dataset comes from and what it must contain."""

    source: str = Field(
        description="http(s):// or file:// URL, a local .zip, or a local folder; "
        "relative paths are taken from the repository root"
    )
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="of the archive")
    expected_fingerprint: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    expected_counts: dict[str, dict[str, Annotated[int, Field(ge=0)]]] | None = Field(
        None, description="source split -> class -> number of images"
    )
    on_bad_image: Literal["fail", "skip"] = "fail"
    min_image_size: Annotated[int, Field(ge=1)] = Field(
        MIN_IMAGE_SIZE,
        description="an image whose shorter side has fewer pixels is a bad file (predict "
        "refuses it too: medimg.inference.DEFAULT_MIN_SIZE)",
    )
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    retries: Annotated[int, Field(ge=0)] = 3


SplitProtocol = Literal["official", "pooled", "thesis"]


class SplitConfig(StrictModel):
    """How the split stage divides a dataset; every protocol listed is written side by side."""

    protocols: list[SplitProtocol] = Field(
        min_length=1, description="each is written to data/splits/<dataset>/<protocol>/"
    )
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.15
    thesis_test_fraction: Fraction = 0.2
    near_duplicate_max_distance: Annotated[int, Field(ge=0, le=64)] = Field(
        4, description="perceptual-hash Hamming distance at or under which two images are one"
    )
    neighbour_max_phash_distance: Annotated[int, Field(ge=0, le=64)] | None = Field(
        None,
        description="similar images (adjacent slices of one scan): pairs within this phash "
        "distance are candidates; null turns the check off",
    )
    neighbour_max_dhash_distance: Annotated[int, Field(ge=0, le=256)] = Field(
        40,
        description="a candidate pair is one image when its 256-bit difference hashes (whole "
        "image or non-black content, the closer) differ in at most this many bits",
    )
    consecutive_max_dhash_distance: Annotated[int, Field(ge=0, le=256)] | None = Field(
        None,
        description="files of one folder numbered n and n + 1 in one name (gg (542).jpg, gg "
        "(543).jpg: adjacent slices of one scan) join one leak group when their 256-bit "
        "difference hashes (whole image or non-black content, the closer) differ in at most "
        "this many bits; null turns the check off",
    )
    seed: Seed = 42

    @model_validator(mode="after")
    def _checks(self) -> SplitConfig:
        if len(set(self.protocols)) != len(self.protocols):
            raise ValueError(f"protocols has duplicates: {self.protocols}; list each once")
        neighbour = self.neighbour_max_phash_distance
        if neighbour is not None and neighbour <= self.near_duplicate_max_distance:
            raise ValueError(
                f"neighbour_max_phash_distance = {neighbour} must be larger than "
                f"near_duplicate_max_distance = {self.near_duplicate_max_distance} (pairs that "
                "close are joined already), or null to turn the neighbour check off"
            )
        consecutive = self.consecutive_max_dhash_distance
        neighbour_dhash = self.neighbour_max_dhash_distance
        if neighbour is not None and consecutive is not None and consecutive < neighbour_dhash:
            raise ValueError(
                f"consecutive_max_dhash_distance = {consecutive} must be at least "
                f"neighbour_max_dhash_distance = {neighbour_dhash}: consecutive numbering is "
                "evidence of one scan, so its similarity test is the looser one; or null to "
                "turn the check off"
            )
        return self


class OfflineAugmentConfig(StrictModel):
    """Augmented copies of the training split written by the augment stage."""

    copies: Annotated[int, Field(ge=0)] = 0
    rotation_deg: Annotated[float, Field(ge=0, le=180)] = 0.0
    zoom_range: ZoomRange = (1.0, 1.0)
    noise_std: Annotated[float, Field(ge=0)] = Field(0.0, description="on the 0-255 scale")
    seed: Seed = 0


# The largest prepared image side: 4,096 x 4,096 x 3 uint8 is 48 MiB per image.
MAX_IMAGE_SIZE = 4096


class PrepareConfig(StrictModel):
    image_size: Annotated[int, Field(ge=8, le=MAX_IMAGE_SIZE)]
    aspect: Literal["stretch", "pad"] = "stretch"
    crop: Literal["none", "content"] = Field(
        "none",
        description="content: crop every image to its non-black box before resizing, so a "
        "film border cannot stand for a class (medimg.data.intensity.crop_to_content)",
    )
    normalize: Literal["none", "equalize"] = Field(
        "none",
        description="grey levels of every image mapped to a standard range before storing "
        "(medimg.data.intensity); predict applies the same through preprocessing.json",
    )
    workers: Annotated[int, Field(ge=1)] = 2
    offline_augment: OfflineAugmentConfig = OfflineAugmentConfig()
    grid_examples_per_class: Annotated[int, Field(ge=1, le=32)] = 4


class DatasetConfig(StrictModel):
    layout: Literal["chest_xray", "mri"]
    classes: list[str] = Field(min_length=2, description="label index order")
    channels: Annotated[Literal[1, 3], NotBool]
    fetch: FetchConfig
    split: SplitConfig
    prepare: PrepareConfig

    @model_validator(mode="after")
    def _classes_unique(self) -> DatasetConfig:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes has duplicates: {self.classes}")
        return self


def dataset_from(raw: dict, name: str, path: Path = Path(PARAMS_FILE)) -> DatasetConfig:
    """`datasets.<name>` of a profile-applied params mapping, validated."""
    datasets = section(raw, "datasets", path)
    if not isinstance(datasets, dict) or name not in datasets:
        known = sorted(datasets) if isinstance(datasets, dict) else []
        raise ParamsError(f"unknown dataset {name!r}; {path} defines {known}")
    return validate(DatasetConfig, datasets[name], f"datasets.{name}", path)


def load_dataset(name: str, path: str | Path = PARAMS_FILE) -> DatasetConfig:
    """Read params.yaml (its profile applied) and validate `datasets.<name>` only."""
    return dataset_from(load_raw(path), name, Path(path))
