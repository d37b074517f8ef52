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

from medimg.inference import DEFAULT_MIN_SIZE

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
    min_image_size: Annotated[int, Field(ge=1)] = Field(
        DEFAULT_MIN_SIZE,
        description="an image whose shorter side has fewer pixels is a bad file (predict "
        "refuses it too: medimg.inference.DEFAULT_MIN_SIZE)",
    )
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    retries: Annotated[int, Field(ge=0)] = 3


SplitProtocol = Literal["official", "pooled", "thesis"]


class SplitConfig(_Strict):
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
    crop: Literal["none", "content"] = Field(
        "none",
        description="content: crop every image to its non-black box before resizing, so a "
        "film border cannot stand for a class (medimg.data.intensity.crop_to_content)",
    )
    normalize: Literal["none", "autocontrast", "equalize"] = Field(
        "none",
        description="grey levels of every image mapped to a standard range before storing "
        "(medimg.data.intensity); predict applies the same through preprocessing.json",
    )
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
    # Random intensity changes per training image, in the loader (numpy, cheap on every
    # backend): brightness shift up to +-brightness (0-1 scale), contrast factor in
    # 1 +- contrast, gamma exp(+-gamma). medimg.data.intensity.random_intensity.
    brightness: Annotated[float, Field(ge=0, le=1)] = 0.0
    contrast: Annotated[float, Field(ge=0, le=1)] = 0.0
    gamma: Annotated[float, Field(ge=0, le=2)] = 0.0
    # Random black borders, in the loader: each training image is framed with
    # frame_probability, each side up to frame_max_fraction of the image wide, so that a
    # film border cannot stand for a class. medimg.data.augmentation.random_frames.
    frame_probability: Annotated[float, Field(ge=0, le=1)] = 0.0
    frame_max_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.15

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

    @property
    def intensity(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.gamma > 0

    @property
    def frames(self) -> bool:
        return self.frame_probability > 0


class EarlyStoppingConfig(_Strict):
    enabled: bool = False
    patience: Annotated[int, Field(ge=1)] = 5
    min_delta: Annotated[float, Field(ge=0)] = 0.0


class LearningRateScheduleConfig(_Strict):
    """How the learning rate changes during a phase of training.

    none: constant. plateau: multiplied by `factor` when the run's monitor has not
    improved for `patience` epochs (Keras's ReduceLROnPlateau), down to `min_lr`.
    cosine: from the phase's rate down to `min_lr` along a half cosine over the
    phase's steps (keras.optimizers.schedules.CosineDecay).
    """

    kind: Literal["none", "plateau", "cosine"] = "none"
    factor: Annotated[float, Field(gt=0, lt=1)] = 0.5
    patience: Annotated[int, Field(ge=1)] = 3
    min_lr: Annotated[float, Field(ge=0)] = 1e-6


class FineTuningConfig(_Strict):
    """Two phases in one training: the pretrained feature extractor frozen, then its top
    blocks unfrozen at a lower learning rate (batch normalisation stays frozen)."""

    frozen_epochs: Annotated[int, Field(ge=1)] = Field(
        description="epochs of phase 1, where only the new head trains at run.learning_rate"
    )
    unfreeze_top_blocks: Annotated[int, Field(ge=0)] = Field(
        description="feature blocks, counted from the top, that train in phase 2"
    )
    learning_rate: Annotated[float, Field(gt=0)] = Field(description="of phase 2")


class RunConfig(_Strict):
    """One training configuration; trained `repeats` times with different seeds."""

    dataset: str
    split_protocol: SplitProtocol = Field(
        description="which of the dataset's split.protocols the run trains and is evaluated on"
    )
    model: str
    model_options: dict[str, Any] = Field(
        default_factory=dict, description="the model's own options (medimg.models.options)"
    )
    fine_tuning: FineTuningConfig | None = None
    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: Annotated[float, Field(gt=0)] = 0.001
    class_weights: Literal["none", "balanced"] | dict[str, Annotated[float, Field(gt=0)]] = "none"
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    lr_schedule: LearningRateScheduleConfig = LearningRateScheduleConfig()
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="targets pulled towards uniform by this share (0 = none)"
    )
    decision_threshold: Literal["argmax", "youden_val"] = Field(
        "argmax",
        description="two classes: 'youden_val' calls class 1 above the threshold that "
        "maximises sensitivity + specificity on the validation split (never the test split)",
    )
    image_size: Annotated[int, Field(ge=8)] | None = Field(
        None, description="model input size; None = the prepared size"
    )
    batch_norm_statistics: Literal["training", "clean"] = Field(
        "training",
        description="'clean': after training, the kept checkpoint's batch-norm statistics "
        "are recomputed on clean (unaugmented) training images; see "
        "medimg.training.batch_norm",
    )
    augmentation: TrainAugmentConfig = TrainAugmentConfig()
    monitor: Literal["val_auc", "val_accuracy", "val_loss"] = "val_auc"
    run_eagerly: bool = Field(
        False,
        description="skip graph compilation: only for tiny runs, where tracing a large "
        "network (about 40 s for EfficientNetB0 on a 2-core CPU) costs more than it saves",
    )
    checkpoint_every_s: Annotated[float, Field(ge=0)] = Field(
        10.0,
        description="write the resume state and the best checkpoint at most this often "
        "(seconds; always after the last epoch of a fit; 0: after every epoch). A kill "
        "loses at most this much training; epochs shorter than it are not slowed by "
        "checkpoint writes (docs/design.md)",
    )
    repeats: Annotated[int, Field(ge=1)] = 5
    seed: Seed = 0
    prediction_examples: Annotated[int, Field(ge=1, le=64)] = 12

    def seeds(self) -> list[int]:
        """The seed of each repeat training, in order."""
        return [self.seed + k for k in range(self.repeats)]

    def options(self) -> Any:
        """`model_options` validated by the model's schema, defaults filled in."""
        from medimg.models import parse_options  # imports no Keras

        return parse_options(self.model, self.model_options)


class TrackingConfig(_Strict):
    experiment_prefix: str = "medimg"
    registered_model_prefix: str = "medimg"
    champion_alias: str = "champion"
    register_models: bool = True


# --- tune: Optuna studies over the runs (medimg.tuning) ----------------------------------
# One entry per study: the run it tunes, the objective and the search space, as data.
# The space is checked against the run here, so a typo or an impossible range fails
# before any trial, naming the study and the key.

# Objective (a key of medimg.evaluation.metrics.classification_metrics on the val split)
# -> (its direction, the per-epoch Keras log that pruning follows, which moves the same way).
TUNE_OBJECTIVES: dict[str, tuple[str, str]] = {
    "roc_auc": ("maximize", "val_auc"),
    "accuracy": ("maximize", "val_accuracy"),
    "log_loss": ("minimize", "val_loss"),
}
# Run keys a study may not search, with the reason its error gives.
UNTUNABLE_RUN_KEYS: dict[str, str] = {
    "dataset": "a study tunes one run on its prepared data",
    "split_protocol": "a study tunes one run on its prepared data",
    "model": "model_options are checked against one model's schema",
    "epochs": "the epochs are the pruner's budget (pruning and early stopping shorten them)",
    "repeats": "each trial trains tune.<study>.repeats seeds",
    "seed": "every trial trains the same seeds, so that trials differ by their parameters only",
    "prediction_examples": "tuning writes no prediction examples",
}
# Optuna's categorical choices must be one of these.
SEARCH_CHOICE_TYPES = (bool, int, float, str)


class SearchDimension(_Strict):
    """One key of a study's search space: `choices`, or a range `low`..`high`.

    A range is sampled as integers when low, high (and step) are all integers, else
    as floats; `log` samples uniformly on a log scale, `step` on the grid low + k*step.
    """

    choices: list[Any] | None = Field(None, min_length=1)
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: Annotated[int | float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SearchDimension:
        ranged = self.low is not None or self.high is not None or self.step is not None
        if self.choices is not None:
            if ranged or self.log:
                raise ValueError("give either choices or low/high (with log or step), not both")
            odd = [c for c in self.choices if not isinstance(c, SEARCH_CHOICE_TYPES)]
            if odd:
                raise ValueError(
                    f"choices must be numbers, strings or booleans (Optuna's categorical "
                    f"choices), got {odd[0]!r}"
                )
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"choices has duplicates: {self.choices}")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs `choices: [...]` or both `low` and `high`")
        if self.low > self.high:
            raise ValueError(f"low = {self.low} is above high = {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got low = {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (a log scale or a grid)")
        if self.step is not None:
            steps = (self.high - self.low) / self.step
            if abs(steps - round(steps)) > 1e-9:
                raise ValueError(
                    f"step = {self.step} does not divide high - low = {self.high - self.low}"
                )
        return self

    @property
    def is_int(self) -> bool:
        """A range of integers (sampled with suggest_int)."""
        bounds = (self.low, self.high, self.step)
        return self.choices is None and all(isinstance(v, int) for v in bounds if v is not None)

    def candidates(self) -> list[tuple[str, Any]]:
        """(what, value) to check against the run: every choice, or low and high."""
        if self.choices is not None:
            return [("choice", choice) for choice in self.choices]
        return [("low", self.low), ("high", self.high)]


class TpeSamplerConfig(_Strict):
    name: Literal["tpe"] = "tpe"
    seed: Seed = 0
    n_startup_trials: Annotated[int, Field(ge=0)] = Field(
        10, description="random trials before TPE models the space"
    )


class RandomSamplerConfig(_Strict):
    name: Literal["random"]
    seed: Seed = 0


class GpSamplerConfig(_Strict):
    name: Literal["gp"]
    seed: Seed = 0
    n_startup_trials: Annotated[int, Field(ge=0)] = 10


class MedianPrunerConfig(_Strict):
    name: Literal["median"] = "median"
    n_startup_trials: Annotated[int, Field(ge=0)] = Field(
        5, description="trials that are never pruned, so the median means something"
    )
    n_warmup_steps: Annotated[int, Field(ge=0)] = Field(
        0, description="epochs a trial trains before it can be pruned"
    )


class HyperbandPrunerConfig(_Strict):
    name: Literal["hyperband"]
    min_resource: Annotated[int, Field(ge=1)] = Field(
        1, description="epochs every trial trains at least"
    )
    reduction_factor: Annotated[int, Field(ge=2)] = 3


class NoPrunerConfig(_Strict):
    name: Literal["none"]


class StudyConfig(_Strict):
    """One Optuna study over one run (`medimg tune --study NAME`, the tune stage)."""

    run: str = Field(description="the run it tunes: a key of runs:")
    objective: Literal["roc_auc", "accuracy", "log_loss"] = Field(
        "roc_auc", description="on the val split, from each seed's best checkpoint"
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="None: the objective's own (maximize, log_loss: minimize)"
    )
    n_trials: Annotated[int, Field(ge=1)] = Field(
        20, description="finished (complete or pruned) trials, over all workers and calls"
    )
    timeout_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="per `medimg tune` call: no trial starts after it"
    )
    sampler: Annotated[
        TpeSamplerConfig | RandomSamplerConfig | GpSamplerConfig, Field(discriminator="name")
    ] = TpeSamplerConfig()
    pruner: Annotated[
        MedianPrunerConfig | HyperbandPrunerConfig | NoPrunerConfig, Field(discriminator="name")
    ] = MedianPrunerConfig()
    repeats: Annotated[int, Field(ge=1)] = Field(
        1, description="seeds run.seed, run.seed+1, ... per trial; the objective is their mean"
    )
    space: dict[str, SearchDimension] = Field(
        min_length=1, description="dotted run key -> choices or range"
    )

    @model_validator(mode="after")
    def _direction_fits_objective(self) -> StudyConfig:
        natural = TUNE_OBJECTIVES[self.objective][0]
        if self.direction is not None and self.direction != natural:
            raise ValueError(
                f"direction = {self.direction!r} contradicts objective {self.objective!r}, "
                f"which is better when {'higher' if natural == 'maximize' else 'lower'}; "
                f"make it {natural!r} or leave it out"
            )
        return self

    @property
    def study_direction(self) -> str:
        return self.direction or TUNE_OBJECTIVES[self.objective][0]

    @property
    def epoch_monitor(self) -> str:
        """The Keras log key reported to the pruner each epoch."""
        return TUNE_OBJECTIVES[self.objective][1]


def searchable_run(run: RunConfig) -> dict[str, Any]:
    """`run` as a mapping where every key a study can search exists (model options too)."""
    raw = run.model_dump(mode="json")
    raw["model_options"] = run.options().model_dump(mode="json")
    return raw


def run_with_values(run: RunConfig, values: dict[str, Any]) -> RunConfig:
    """`run` with each dotted key of `values` (e.g. "model_options.dropout") set, re-validated.

    Raises ParamsError for a key the run does not have, pydantic's ValidationError for a
    value the run's schema (or its model's options schema) rejects.
    """
    raw = apply_overrides(searchable_run(run), values, "search space")
    trial_run = RunConfig.model_validate(raw)
    trial_run.options()
    return trial_run


def _leaf_keys(node: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            keys.extend(_leaf_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _error_summary(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in err.errors()
    )


def _check_study(name: str, study: StudyConfig, params: Params) -> None:
    """The study's run exists and every space key and value fits it; errors name study and key."""
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(
            f"tune.{name}: a study name may hold only letters, digits, _ and - "
            "(it names folders and MLflow tags)"
        )
    if study.run not in params.runs:
        raise ValueError(
            f"tune.{name}.run = {study.run!r} is not a configured run; "
            f"allowed: {sorted(params.runs)}"
        )
    run = params.runs[study.run]
    where = f"runs.{study.run}"
    searchable = [
        k for k in _leaf_keys(searchable_run(run)) if k.split(".")[0] not in UNTUNABLE_RUN_KEYS
    ]
    prepared = params.datasets[run.dataset].prepare.image_size
    for key, dimension in study.space.items():
        here = f"tune.{name}.space.{key}"
        top = key.split(".")[0]
        if top in UNTUNABLE_RUN_KEYS:
            raise ValueError(f"{here}: {top} cannot be searched: {UNTUNABLE_RUN_KEYS[top]}")
        if key not in searchable:
            raise ValueError(
                f"{here}: {where} has no key {key!r}; searchable keys: {', '.join(searchable)}"
            )
        for what, value in dimension.candidates():
            if key == "image_size" and isinstance(value, int | float) and value > prepared:
                raise ValueError(
                    f"{here}: {what} {value} is above the prepared size {prepared} of dataset "
                    f"{run.dataset!r} (datasets.{run.dataset}.prepare.image_size): the model "
                    "can only shrink the prepared images; lower it or prepare larger images"
                )
            try:
                run_with_values(run, {key: value})
            except ValidationError as err:
                raise ValueError(
                    f"{here}: {what} {value!r} is not a valid {where}.{key}: {_error_summary(err)}"
                ) from None


class Params(_Strict):
    profile: str
    datasets: dict[str, DatasetConfig] = Field(min_length=1)
    runs: dict[str, RunConfig] = Field(default_factory=dict)
    tracking: TrackingConfig = TrackingConfig()
    tune: dict[str, StudyConfig] = Field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        from medimg.models import MODELS  # a dict of specs; imports no Keras

        for name, ds in self.datasets.items():
            if len(set(ds.classes)) != len(ds.classes):
                raise ValueError(f"datasets.{name}.classes has duplicates: {ds.classes}")
        for name, run in self.runs.items():
            if run.dataset not in self.datasets:
                raise ValueError(
                    f"runs.{name}.dataset = {run.dataset!r} is not a configured dataset; "
                    f"allowed: {sorted(self.datasets)}"
                )
            protocols = self.datasets[run.dataset].split.protocols
            if run.split_protocol not in protocols:
                raise ValueError(
                    f"runs.{name}.split_protocol = {run.split_protocol!r} is not split by "
                    f"dataset {run.dataset!r}; allowed: datasets.{run.dataset}.split.protocols "
                    f"= {protocols}"
                )
            if run.model not in MODELS:
                raise ValueError(
                    f"runs.{name}.model = {run.model!r} is not a known model; "
                    f"allowed: {sorted(MODELS)}"
                )
            _check_model_options(name, run)
            n_classes = len(self.datasets[run.dataset].classes)
            if run.decision_threshold != "argmax" and n_classes != 2:
                raise ValueError(
                    f"runs.{name}.decision_threshold = {run.decision_threshold!r} needs two "
                    f"classes; {run.dataset} has {n_classes}: use 'argmax'"
                )
            if run.fine_tuning is not None and run.fine_tuning.frozen_epochs >= run.epochs:
                raise ValueError(
                    f"runs.{name}.fine_tuning.frozen_epochs = {run.fine_tuning.frozen_epochs} "
                    f"leaves no fine-tuning epoch of runs.{name}.epochs = {run.epochs}; "
                    "make it smaller than epochs, or remove fine_tuning"
                )
            if isinstance(run.class_weights, dict):
                unknown = set(run.class_weights) - set(self.datasets[run.dataset].classes)
                if unknown:
                    raise ValueError(
                        f"runs.{name}.class_weights names unknown classes {sorted(unknown)}; "
                        f"allowed: {self.datasets[run.dataset].classes}"
                    )
        return self

    @model_validator(mode="after")
    def _check_studies(self) -> Params:
        for name, study in self.tune.items():
            _check_study(name, study, self)
        return self

    def study(self, name: str) -> StudyConfig:
        if name not in self.tune:
            raise ParamsError(
                f"unknown study {name!r}; params.yaml tune: defines {sorted(self.tune)}"
            )
        return self.tune[name]

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


def _check_model_options(run_name: str, run: RunConfig) -> None:
    """`run.model_options` against its model's schema; the error names run, option, allowed."""
    from medimg.models import get_spec

    schema = get_spec(run.model).options
    try:
        run.options()
    except ValidationError as err:
        allowed = ", ".join(
            f"{key} ({_type_name(field.annotation)})" for key, field in schema.model_fields.items()
        )
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            message = "unknown option" if e["type"] == "extra_forbidden" else e["msg"]
            problems.append(f"runs.{run_name}.model_options.{key} = {e.get('input')!r}: {message}")
        raise ValueError(f"{'; '.join(problems)} (model {run.model!r} allows: {allowed})") from None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], origin: str) -> dict[str, Any]:
    """Return a copy of `raw` with each dotted key of `overrides` replaced.

    A dotted key must name an existing key of `raw` (`origin` names the
    overrides in the error message).
    """
    for dotted in overrides:
        inner = [key for key in overrides if key.startswith(f"{dotted}.")]
        if inner:
            # Which wins would depend on the order of the keys (a merged profile's
            # come first): say so instead.
            raise ParamsError(
                f"{origin}: override keys {dotted!r} and {inner[0]!r} overlap; "
                f"set the whole {dotted!r} or only its parts, not both"
            )
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
        if not e["loc"] and e["type"] == "value_error":
            # A cross-check (Params._cross_checks) names its own keys and values.
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
            continue
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"  {key} = {shown}: {e['msg']}")
    return "\n".join(lines)


def apply_profile(
    raw: dict[str, Any], profile: str, profiles: dict[str, Any], path: Path
) -> dict[str, Any]:
    """`raw` with profile `profile`'s dotted-key overrides applied.

    A profile that starts from another takes its overrides with a YAML merge key
    (`<<: *full-local`): the loaded mapping then holds both, so DVC, which records
    `profiles.<selected>`, sees every value the profile sets.
    """
    if profile not in profiles:
        raise ParamsError(
            f"{path}: profile = {profile!r} is not defined; allowed: 'sample' or one of "
            f"{sorted(profiles)} (under 'profiles:')"
        )
    return apply_overrides(raw, dict(profiles[profile] or {}), f"{path}: profiles.{profile}")


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
    # "sample" is the base values; an entry under profiles: applies like any other.
    if profile != "sample" or profile in profiles:
        raw = apply_profile(raw, profile, profiles, path)
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
