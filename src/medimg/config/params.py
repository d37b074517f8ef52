"""The whole of params.yaml, every part checked: `medimg params`, the report, the GPU bundle.

Stages that read one part validate only that part (medimg.config.datasets, .runs,
.studies); what reads everything comes here, through the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medimg.config.base import PARAMS_FILE, ParamsError, apply_profile, read_yaml, section
from medimg.config.datasets import DatasetConfig, dataset_from
from medimg.config.runs import (
    RunConfig,
    RunSettings,
    TrackingConfig,
    run_settings_from,
    tracking_from,
)
from medimg.config.studies import StudyConfig, StudySettings, study_settings_from


@dataclass(frozen=True)
class Params:
    """Every part of params.yaml, validated, with the selected profile applied.

    runs: each run merged with its run defaults (medimg.config.runs).
    source: the mapping as read from the file, before its profile was applied (another
        profile of the same file: `parse_params({**params.source, "profile": "full"})`).
    """

    profile: str
    datasets: dict[str, DatasetConfig]
    runs: dict[str, RunConfig]
    tracking: TrackingConfig
    tune: dict[str, StudyConfig]
    profiles: dict[str, Any]
    source: dict[str, Any] = field(repr=False, compare=False)

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

    def study(self, name: str) -> StudyConfig:
        if name not in self.tune:
            raise ParamsError(
                f"unknown study {name!r}; params.yaml tune: defines {sorted(self.tune)}"
            )
        return self.tune[name]

    def run_settings(self, name: str) -> RunSettings:
        """What the train and evaluate stages of run `name` read."""
        run = self.run(name)
        return RunSettings(self.profile, name, run, self.dataset(run.dataset), self.tracking)

    def study_settings(self, name: str) -> StudySettings:
        """What the tune stage of study `name` reads."""
        overrides = self.profiles.get(self.profile) or {}
        return StudySettings(
            name, self.study(name), self.run_settings(self.study(name).run), dict(overrides)
        )

    def effective(self) -> dict[str, Any]:
        """Every effective value as plain data (model options with their defaults)."""
        runs = {}
        for name, run in self.runs.items():
            runs[name] = {
                **run.model_dump(mode="json"),
                "model_options": run.options().model_dump(mode="json"),
            }
        return {
            "profile": self.profile,
            "datasets": {k: v.model_dump(mode="json") for k, v in self.datasets.items()},
            "runs": runs,
            "tracking": self.tracking.model_dump(mode="json"),
            "tune": {k: v.model_dump(mode="json") for k, v in self.tune.items()},
        }


def parse_params(raw: Any, path: Path = Path(PARAMS_FILE)) -> Params:
    """Validate a whole params mapping (as read from the file), its profile applied first."""
    applied = apply_profile(raw, path)
    datasets = section(applied, "datasets", path)
    if not isinstance(datasets, dict) or not datasets:
        raise ParamsError(f"{path}: datasets must name at least one dataset")
    runs = applied.get("runs") or {}
    studies = applied.get("tune") or {}
    for part, value in (("runs", runs), ("tune", studies)):
        if not isinstance(value, dict):
            raise ParamsError(f"{path}: {part} must be a mapping of names to settings")
    by_dataset = (applied.get("run_defaults") or {}).get("by_dataset") or {}
    unknown = sorted(set(by_dataset) - set(datasets))
    if unknown:
        raise ParamsError(
            f"{path}: run_defaults.by_dataset names {unknown}, which are not datasets; "
            f"allowed: {sorted(datasets)}"
        )
    settings = {name: run_settings_from(applied, name, path) for name in runs}
    return Params(
        profile=str(applied["profile"]),
        datasets={name: dataset_from(applied, name, path) for name in datasets},
        runs={name: s.run for name, s in settings.items()},
        tracking=tracking_from(applied, path),
        tune={name: study_settings_from(applied, name, path).study for name in studies},
        profiles=dict(applied.get("profiles") or {}),
        source=raw,
    )


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read params.yaml and validate all of it; raises ParamsError naming the bad key."""
    path = Path(path)
    return parse_params(read_yaml(path), path)
