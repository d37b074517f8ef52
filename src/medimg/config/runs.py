"""`runs.<name>` of params.yaml, with `run_defaults` and `tracking`: what train and evaluate read.

A run is what `run_defaults.all` says, then what `run_defaults.by_dataset.<its
dataset>` says, then its own keys, merged mapping by mapping (`run_settings_from`):
each run states only what makes it itself, and `medimg params --run NAME` prints it
whole. DVC tracks the same three parts for each train and evaluate stage.

A run is checked whole before any work (`check_run`): each key's type and range, its
model's options, and the combinations across keys and with its dataset (the split
protocol exists, the image size fits the prepared size, fine-tuning fits the model's
blocks, clean batch-norm statistics need batch normalisation, ...). The train stage
calls this before a run or an MLflow record exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from medimg.config.base import (
    PARAMS_FILE,
    ParamsError,
    Seed,
    StrictModel,
    ZoomRange,
    deep_merge,
    error_lines,
    load_raw,
    section,
    validate,
)
from medimg.config.datasets import MAX_IMAGE_SIZE, DatasetConfig, SplitProtocol, dataset_from


class TrainAugmentConfig(StrictModel):
    """Random augmentation applied to training batches only."""

    rotation_deg: Annotated[float, Field(ge=0, le=180)] = 0.0
    zoom_range: ZoomRange = (1.0, 1.0)
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

    @property
    def geometric(self) -> bool:
        return self.rotation_deg > 0 or self.zoom_range != (1.0, 1.0)

    @property
    def intensity(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.gamma > 0

    @property
    def frames(self) -> bool:
        return self.frame_probability > 0


class EarlyStoppingConfig(StrictModel):
    enabled: bool = False
    patience: Annotated[int, Field(ge=1)] = 5
    min_delta: Annotated[float, Field(ge=0)] = 0.0


class LearningRateScheduleConfig(StrictModel):
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


class FineTuningConfig(StrictModel):
    """Two phases in one training: the pretrained feature extractor frozen, then its top
    blocks unfrozen at a lower learning rate (batch normalisation stays frozen)."""

    frozen_epochs: Annotated[int, Field(ge=1)] = Field(
        description="epochs of phase 1, where only the new head trains at run.learning_rate"
    )
    unfreeze_top_blocks: Annotated[int, Field(ge=0)] = Field(
        description="feature blocks, counted from the top, that train in phase 2"
    )
    learning_rate: Annotated[float, Field(gt=0)] = Field(description="of phase 2")


class RunConfig(StrictModel):
    """One training configuration; trained `repeats` times with different seeds."""

    dataset: str
    split_protocol: SplitProtocol = Field(
        description="which of the dataset's split.protocols the run trains and is evaluated on"
    )
    model: str = Field(description="a model of the zoo (medimg.models.zoo.<model>)")
    model_options: dict[str, Any] = Field(
        default_factory=dict, description="the model's own options (its zoo module's schema)"
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
    image_size: Annotated[int, Field(ge=8, le=MAX_IMAGE_SIZE)] | None = Field(
        None, description="model input size, at most the prepared size; None = the prepared size"
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
        from medimg.models.registry import parse_options  # imports no Keras

        return parse_options(self.model, self.model_options)

    def input_size(self, prepared_size: int) -> int:
        """The model's input size: `image_size`, or the prepared size when that is null.

        The one place of this rule: the model resizes the prepared images to it.
        """
        return self.image_size or prepared_size


class TrackingConfig(StrictModel):
    experiment_prefix: str = "medimg"
    registered_model_prefix: str = "medimg"
    champion_alias: str = "champion"
    register_models: bool = True


# Keys a run must state itself: dvc.yaml reads them to find the run's data and model.
OWN_KEYS = ("dataset", "split_protocol", "model")


@dataclass(frozen=True)
class RunSettings:
    """What the train and evaluate stages of one run read, checked together."""

    profile: str
    name: str
    run: RunConfig
    dataset: DatasetConfig
    tracking: TrackingConfig
    # more tags for its MLflow parent run (a study's confirmation names its study)
    tags: dict[str, str] = field(default_factory=dict)


def merged_run(raw: dict[str, Any], name: str, path: Path) -> tuple[dict[str, Any], Any]:
    """`runs.<name>` on top of its run defaults, and a function naming where a key came from."""
    runs = section(raw, "runs", path)
    if not isinstance(runs, dict) or name not in runs:
        known = sorted(runs) if isinstance(runs, dict) else []
        raise ParamsError(f"unknown run {name!r}; {path} defines {known}")
    own = runs[name]
    if not isinstance(own, dict):
        raise ParamsError(f"{path}: runs.{name} must be a mapping of its settings")
    missing = [key for key in OWN_KEYS if key not in own]
    datasets = section(raw, "datasets", path)
    if missing:
        raise ParamsError(
            f"{path}: runs.{name} must state {missing} itself (dvc.yaml reads them to find "
            "the run's data and model), not take them from run_defaults"
        )
    if not isinstance(datasets, dict) or own["dataset"] not in datasets:
        raise ParamsError(
            f"runs.{name}.dataset = {own['dataset']!r} is not a configured dataset; "
            f"allowed: {sorted(datasets) if isinstance(datasets, dict) else []}"
        )
    defaults = raw.get("run_defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - {"all", "by_dataset"}:
        raise ParamsError(
            f"{path}: run_defaults must be a mapping with the keys 'all' (every run) and "
            "'by_dataset' (dataset name -> the defaults of its runs)"
        )
    by_dataset = (defaults.get("by_dataset") or {}).get(own["dataset"]) or {}
    layers = [
        (f"runs.{name}", own),
        (f"run_defaults.by_dataset.{own['dataset']}", by_dataset),
        ("run_defaults.all", defaults.get("all") or {}),
    ]

    def origin(loc: tuple[str, ...]) -> str | None:
        for where, layer in layers:
            node: Any = layer
            for part in loc:
                if not isinstance(node, dict) or part not in node:
                    break
                node = node[part]
            else:
                return ".".join((where, *loc))
        return None

    merged = deep_merge(deep_merge(layers[2][1], layers[1][1]), own)
    return merged, origin


def check_run(name: str, run: RunConfig, dataset: DatasetConfig) -> None:
    """The combinations across a run's keys and with its dataset; ParamsError naming the keys.

    Its model and options, the split protocol, the classes it names, the image size
    against the prepared size, fine-tuning against the epochs and the model's blocks,
    clean batch-norm statistics against the model's batch normalisation.
    """
    from medimg.models.registry import get_spec  # imports no Keras

    where = f"runs.{name}"
    try:
        spec = get_spec(run.model)
    except KeyError as err:
        raise ParamsError(f"{where}.model = {run.model!r}: {err.args[0]}") from None
    options = _checked_options(where, run, spec)
    problems = []
    protocols = dataset.split.protocols
    if run.split_protocol not in protocols:
        problems.append(
            f"{where}.split_protocol = {run.split_protocol!r} is not split by dataset "
            f"{run.dataset!r}; allowed: datasets.{run.dataset}.split.protocols = {protocols}"
        )
    prepared = dataset.prepare.image_size
    if run.image_size is not None and run.image_size > prepared:
        problems.append(
            f"{where}.image_size = {run.image_size} is above the prepared size {prepared} "
            f"(datasets.{run.dataset}.prepare.image_size): the model can only shrink the "
            "prepared images; lower it, or prepare larger images"
        )
    n_classes = len(dataset.classes)
    if run.decision_threshold != "argmax" and n_classes != 2:
        problems.append(
            f"{where}.decision_threshold = {run.decision_threshold!r} needs two classes; "
            f"{run.dataset} has {n_classes}: use 'argmax'"
        )
    if isinstance(run.class_weights, dict):
        unknown = set(run.class_weights) - set(dataset.classes)
        if unknown:
            problems.append(
                f"{where}.class_weights names unknown classes {sorted(unknown)}; "
                f"allowed: {dataset.classes}"
            )
    problems += _fine_tuning_problems(where, run, spec.blocks(options))
    if run.batch_norm_statistics == "clean" and not spec.uses_batch_norm(options):
        problems.append(
            f"{where}.batch_norm_statistics = 'clean' needs batch normalisation, which model "
            f"{run.model!r} with these model_options has none of; use 'training', or turn "
            "the model's batch_norm option on"
        )
    if problems:
        raise ParamsError("\n  ".join(problems))


def _checked_options(where: str, run: RunConfig, spec: Any) -> Any:
    """`run.model_options` against its model's schema; the error names run, option, allowed."""
    try:
        return spec.options.model_validate(run.model_options)
    except ValidationError as err:
        allowed = ", ".join(
            f"{key} ({_type_name(field.annotation)})"
            for key, field in spec.options.model_fields.items()
        )
        lines = error_lines(err, f"{where}.model_options", noun="option")
        raise ParamsError(f"{'; '.join(lines)} (model {run.model!r} allows: {allowed})") from None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _fine_tuning_problems(where: str, run: RunConfig, blocks: tuple[str, ...]) -> list[str]:
    tuning = run.fine_tuning
    if tuning is None:
        return []
    problems = []
    if tuning.frozen_epochs >= run.epochs:
        problems.append(
            f"{where}.fine_tuning.frozen_epochs = {tuning.frozen_epochs} leaves no "
            f"fine-tuning epoch of {where}.epochs = {run.epochs}; make it smaller than "
            "epochs, or remove fine_tuning"
        )
    if tuning.unfreeze_top_blocks > len(blocks):
        problems.append(
            f"{where}.fine_tuning.unfreeze_top_blocks = {tuning.unfreeze_top_blocks}, but "
            f"model {run.model!r} has {len(blocks)} blocks ({', '.join(blocks)}); "
            f"use at most {len(blocks)}"
        )
    return problems


def run_from(raw: dict[str, Any], name: str, path: Path) -> RunConfig:
    """`runs.<name>` of a profile-applied params mapping, merged with its defaults, validated
    (its own keys only: `check_run` checks it with its dataset)."""
    merged, origin = merged_run(raw, name, path)
    return validate(RunConfig, merged, f"runs.{name}", path, origin)


def tracking_from(raw: dict[str, Any], path: Path) -> TrackingConfig:
    return validate(TrackingConfig, raw.get("tracking") or {}, "tracking", path)


def run_settings_from(raw: dict[str, Any], name: str, path: Path) -> RunSettings:
    """One run's settings from a profile-applied params mapping, checked whole."""
    run = run_from(raw, name, path)
    dataset = dataset_from(raw, run.dataset, path)
    check_run(name, run, dataset)
    return RunSettings(str(raw["profile"]), name, run, dataset, tracking_from(raw, path))


def load_run_settings(name: str, path: str | Path = PARAMS_FILE) -> RunSettings:
    """Read params.yaml (its profile applied) and check run `name` with its dataset."""
    return run_settings_from(load_raw(path), name, Path(path))
