"""`tune.<name>` of params.yaml: one Optuna study over one run (medimg.tuning).

The run it tunes, the objective and the search space, as data. The space is checked
against the run here (every key exists and every value fits the run, with its
dataset), so a typo or an impossible range fails before any trial, naming the study
and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from medimg.config.base import (
    PARAMS_FILE,
    ParamsError,
    Seed,
    StrictModel,
    apply_overrides,
    error_lines,
    load_raw,
    section,
    validate,
)
from medimg.config.runs import RunConfig, RunSettings, check_run, run_settings_from

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


class SearchDimension(StrictModel):
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


class TpeSamplerConfig(StrictModel):
    name: Literal["tpe"] = "tpe"
    seed: Seed = 0
    n_startup_trials: Annotated[int, Field(ge=0)] = Field(
        10, description="random trials before TPE models the space"
    )


class RandomSamplerConfig(StrictModel):
    name: Literal["random"]
    seed: Seed = 0


class GpSamplerConfig(StrictModel):
    name: Literal["gp"]
    seed: Seed = 0
    n_startup_trials: Annotated[int, Field(ge=0)] = 10


class MedianPrunerConfig(StrictModel):
    name: Literal["median"] = "median"
    n_startup_trials: Annotated[int, Field(ge=0)] = Field(
        5, description="trials that are never pruned, so the median means something"
    )
    n_warmup_steps: Annotated[int, Field(ge=0)] = Field(
        0, description="epochs a trial trains before it can be pruned"
    )


class HyperbandPrunerConfig(StrictModel):
    name: Literal["hyperband"]
    min_resource: Annotated[int, Field(ge=1)] = Field(
        1, description="epochs every trial trains at least"
    )
    reduction_factor: Annotated[int, Field(ge=2)] = 3


class NoPrunerConfig(StrictModel):
    name: Literal["none"]


class StudyConfig(StrictModel):
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
    confirm_repeats: Annotated[int, Field(ge=1)] = Field(
        3,
        description="the confirmation (stage confirm@<study>) trains the best trial's values "
        "again on this many seeds the study never trained, as run <study>_best",
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


def check_study(name: str, study: StudyConfig, settings: RunSettings) -> None:
    """Every space key and value fits the study's run (`settings`); errors name study and key."""
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ParamsError(
            f"tune.{name}: a study name may hold only letters, digits, _ and - "
            "(it names folders and MLflow tags)"
        )
    run = settings.run
    where = f"runs.{study.run}"
    searchable = [
        k for k in _leaf_keys(searchable_run(run)) if k.split(".")[0] not in UNTUNABLE_RUN_KEYS
    ]
    for key, dimension in study.space.items():
        here = f"tune.{name}.space.{key}"
        top = key.split(".")[0]
        if top in UNTUNABLE_RUN_KEYS:
            raise ParamsError(f"{here}: {top} cannot be searched: {UNTUNABLE_RUN_KEYS[top]}")
        if key not in searchable:
            raise ParamsError(
                f"{here}: {where} has no key {key!r}; searchable keys: {', '.join(searchable)}"
            )
        for what, value in dimension.candidates():
            try:
                check_run(study.run, run_with_values(run, {key: value}), settings.dataset)
            except ValidationError as err:
                raise ParamsError(
                    f"{here}: {what} {value!r} is not a valid {where}.{key}: "
                    f"{'; '.join(error_lines(err, ''))}"
                ) from None
            except ParamsError as err:
                raise ParamsError(f"{here}: {what} {value!r}: {err}") from None


@dataclass(frozen=True)
class StudySettings:
    """What the tune stage of one study reads: the study and its run's settings."""

    name: str
    study: StudyConfig
    run: RunSettings
    # The selected profile's dotted overrides (empty for the base values): a tuned value
    # written to the base params would be shadowed by one of them.
    profile_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def profile(self) -> str:
        return self.run.profile


def study_settings_from(raw: dict[str, Any], name: str, path: Path) -> StudySettings:
    """One study's settings from a profile-applied params mapping, checked with its run."""
    studies = section(raw, "tune", path) if "tune" in raw else {}
    if not isinstance(studies, dict) or name not in studies:
        known = sorted(studies) if isinstance(studies, dict) else []
        raise ParamsError(f"unknown study {name!r}; {path} tune: defines {known}")
    study = validate(StudyConfig, studies[name], f"tune.{name}", path)
    runs = raw.get("runs") or {}
    if study.run not in runs:
        raise ParamsError(
            f"tune.{name}.run = {study.run!r} is not a configured run; allowed: {sorted(runs)}"
        )
    settings = run_settings_from(raw, study.run, path)
    check_study(name, study, settings)
    overrides = (raw.get("profiles") or {}).get(settings.profile) or {}
    return StudySettings(name, study, settings, dict(overrides))


def load_study_settings(name: str, path: str | Path = PARAMS_FILE) -> StudySettings:
    """Read params.yaml (its profile applied) and check study `name` with its run."""
    return study_settings_from(load_raw(path), name, Path(path))
