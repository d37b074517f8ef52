"""params.yaml, validated once into typed objects.

Every stage starts with `load_params()`; a bad value fails there, before any
work, with a message naming the key, the value and what is allowed.

The file holds the sample profile as its base values. `profile: full` (or any
other name under `profiles:`) applies that profile's dotted-key overrides on
top, for example `datasets.chest_xray.fetch.source: https://...`. An override
must name a key that exists in the base, so a typo cannot silently add a knob
that nothing reads.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = "params.yaml"


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or holds an invalid value."""


class _Strict(BaseModel):
    # extra="forbid": an unknown key is an error, not a silently ignored knob.
    model_config = ConfigDict(extra="forbid", frozen=True)


Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Seed = Annotated[int, Field(ge=0)]


class FetchConfig(_Strict):
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
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    retries: Annotated[int, Field(ge=0)] = 3


class SplitConfig(_Strict):
    protocol: Literal["official", "pooled", "thesis"]
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.15
    thesis_test_fraction: Fraction = 0.2
    near_duplicate_max_distance: Annotated[int, Field(ge=0, le=64)] = Field(
        4, description="perceptual-hash Hamming distance at or under which two images are one"
    )
    seed: Seed = 42


class OfflineAugmentConfig(_Strict):
    """Augmented copies of the training split written by the augment stage."""

    copies: Annotated[int, Field(ge=0)] = 0
    rotation_deg: Annotated[float, Field(ge=0, le=180)] = 0.0
    zoom_range: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (1.0, 1.0)
    noise_std: Annotated[float, Field(ge=0)] = Field(0.0, description="on the 0-255 scale")
    seed: Seed = 0

    @model_validator(mode="after")
    def _zoom_ordered(self) -> OfflineAugmentConfig:
        if self.zoom_range[0] > self.zoom_range[1]:
            raise ValueError(
                f"zoom_range must be [low, high] with low <= high, got {self.zoom_range}"
            )
        return self


class PrepareConfig(_Strict):
    image_size: Annotated[int, Field(ge=8, le=4096)]
    aspect: Literal["stretch", "pad"] = "stretch"
    workers: Annotated[int, Field(ge=1)] = 2
    offline_augment: OfflineAugmentConfig = OfflineAugmentConfig()
    grid_examples_per_class: Annotated[int, Field(ge=1, le=32)] = 4


class DatasetConfig(_Strict):
    layout: Literal["chest_xray", "mri"]
    classes: list[str] = Field(min_length=2, description="label index order")
    channels: Literal[1, 3]
    fetch: FetchConfig
    split: SplitConfig
    prepare: PrepareConfig


class TrainAugmentConfig(_Strict):
    """Random augmentation applied to training batches only."""

    rotation_deg: Annotated[float, Field(ge=0, le=180)] = 0.0
    zoom_range: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (1.0, 1.0)
    noise_std: Annotated[float, Field(ge=0)] = Field(0.0, description="on the 0-255 scale")
    where: Literal["auto", "model", "loader"] = Field(
        "auto", description="where geometric augmentation runs; auto picks per backend"
    )

    @model_validator(mode="after")
    def _zoom_ordered(self) -> TrainAugmentConfig:
        if self.zoom_range[0] > self.zoom_range[1]:
            raise ValueError(
                f"zoom_range must be [low, high] with low <= high, got {self.zoom_range}"
            )
        return self

    @property
    def geometric(self) -> bool:
        return self.rotation_deg > 0 or self.zoom_range != (1.0, 1.0)


class EarlyStoppingConfig(_Strict):
    enabled: bool = False
    patience: Annotated[int, Field(ge=1)] = 5
    min_delta: Annotated[float, Field(ge=0)] = 0.0


class RunConfig(_Strict):
    """One training configuration; trained `repeats` times with different seeds."""

    dataset: str
    model: str
    model_options: dict[str, Any] = Field(default_factory=dict)
    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: Annotated[float, Field(gt=0)] = 0.001
    class_weights: Literal["none", "balanced"] | dict[str, Annotated[float, Field(gt=0)]] = "none"
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    image_size: Annotated[int, Field(ge=8)] | None = Field(
        None, description="model input size; None = the prepared size"
    )
    augmentation: TrainAugmentConfig = TrainAugmentConfig()
    monitor: Literal["val_auc", "val_accuracy", "val_loss"] = "val_auc"
    repeats: Annotated[int, Field(ge=1)] = 5
    seed: Seed = 0
    prediction_examples: Annotated[int, Field(ge=1, le=64)] = 12

    def seeds(self) -> list[int]:
        """The seed of each repeat training, in order."""
        return [self.seed + k for k in range(self.repeats)]


class TrackingConfig(_Strict):
    experiment_prefix: str = "medimg"
    registered_model_prefix: str = "medimg"
    champion_alias: str = "champion"
    register_models: bool = True


class Params(_Strict):
    profile: str
    datasets: dict[str, DatasetConfig] = Field(min_length=1)
    runs: dict[str, RunConfig] = Field(default_factory=dict)
    tracking: TrackingConfig = TrackingConfig()
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        from medimg.models import MODEL_BUILDERS  # a dict of names; imports no Keras

        for name, ds in self.datasets.items():
            if len(set(ds.classes)) != len(ds.classes):
                raise ValueError(f"datasets.{name}.classes has duplicates: {ds.classes}")
        for name, run in self.runs.items():
            if run.dataset not in self.datasets:
                raise ValueError(
                    f"runs.{name}.dataset = {run.dataset!r} is not a configured dataset; "
                    f"allowed: {sorted(self.datasets)}"
                )
            if run.model not in MODEL_BUILDERS:
                raise ValueError(
                    f"runs.{name}.model = {run.model!r} is not a known model; "
                    f"allowed: {sorted(MODEL_BUILDERS)}"
                )
            if isinstance(run.class_weights, dict):
                unknown = set(run.class_weights) - set(self.datasets[run.dataset].classes)
                if unknown:
                    raise ValueError(
                        f"runs.{name}.class_weights names unknown classes {sorted(unknown)}; "
                        f"allowed: {self.datasets[run.dataset].classes}"
                    )
        return self

    def dataset(self, name: str) -> DatasetConfig:
        if name not in self.datasets:
            raise ParamsError(
                f"unknown dataset {name!r}; params.yaml defines {sorted(self.datasets)}"
            )
        return self.datasets[name]

    def run(self, name: str) -> RunConfig:
        if name not in self.runs:
            raise ParamsError(f"unknown run {name!r}; params.yaml defines {sorted(self.runs)}")
        return self.runs[name]


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], origin: str) -> dict[str, Any]:
    """Return a copy of `raw` with each dotted key of `overrides` replaced.

    A dotted key must name an existing key of `raw` (`origin` names the
    overrides in the error message).
    """
    result = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = result
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[: depth + 1])
                raise ParamsError(
                    f"{origin}: override key {dotted!r} does not exist in params "
                    f"(no {where!r}); an override may only change an existing key"
                )
            if depth == len(parts) - 1:
                node[part] = copy.deepcopy(value)
            else:
                node = node[part]
    return result


def _format_validation_error(err: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"  {key} = {shown}: {e['msg']}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], path: Path = Path(PARAMS_FILE)) -> Params:
    """Validate a params mapping (after applying its active profile)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    profile = raw.get("profile")
    profiles = raw.get("profiles") or {}
    if profile is None:
        raise ParamsError(
            f"{path}: missing key 'profile' (allowed: 'sample' or one of {sorted(profiles)})"
        )
    if profile != "sample":
        if profile not in profiles:
            raise ParamsError(
                f"{path}: profile = {profile!r} is not defined; allowed: 'sample' or one of "
                f"{sorted(profiles)} (under 'profiles:')"
            )
        raw = apply_overrides(raw, profiles[profile] or {}, f"{path}: profiles.{profile}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_validation_error(err, path)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raises ParamsError naming the bad key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found (run from the repository root, where params.yaml is)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, path)
