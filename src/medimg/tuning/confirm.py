"""A study's confirmation: its best trial's values trained again on fresh seeds.

One seed per trial cannot rank settings a few points apart (docs/research.md: one
configuration's seeds spanned 0.74 to 0.84 of validation accuracy), so a study's best
values are trained again as an ordinary run named `<study>_best`: the study's run with
the values of reports/tune/<study>/best_params.yaml, on `confirm_repeats` seeds the
study never trained (run.seed + study.repeats, ...), by the train stage's code, then
evaluated by the evaluate stage's code into reports/runs/<study>_best/ (`medimg
confirm`, medimg.commands.confirm; this module only says what to train). The report
sets its test numbers beside the untuned run's, with an interval for the difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from medimg import paths
from medimg.config.base import ParamsError
from medimg.config.runs import RunSettings, check_run
from medimg.config.studies import StudySettings, run_with_values
from medimg.errors import UserError

BEST_PARAMS_FILE = "best_params.yaml"
CONFIRMATION_SUFFIX = "_best"
# Tags of the confirmation's parent run: the study it confirms (and its MLflow study run,
# whose trials the report shows beside the confirmation) and the run it tunes.
STUDY_TAG = "medimg.confirms_study"
STUDY_RUN_TAG = "medimg.study_run_id"
TUNED_RUN_TAG = "medimg.tunes_run"


class ConfirmError(UserError, RuntimeError):
    """A study cannot be confirmed: it has not run, or its best values no longer fit."""


def confirmation_name(study_name: str) -> str:
    """The run name of a study's confirmation: models/<it>/, reports/runs/<it>/, MLflow."""
    return f"{study_name}{CONFIRMATION_SUFFIX}"


def best_params_file(study_name: str) -> Path:
    return paths.reports_root() / "tune" / study_name / BEST_PARAMS_FILE


def read_best_record(settings: StudySettings, path: Path | None = None) -> dict[str, Any]:
    """best_params.yaml of the study, its "params" as run keys ({"learning_rate": ...}).

    A ConfirmError when the file is missing, unreadable or another study's.
    """
    path = path or best_params_file(settings.name)
    if not path.is_file():
        raise ConfirmError(
            f"{path}: not found; run the study first: dvc repro tune@{settings.name} "
            f"(or medimg tune --study {settings.name})"
        )
    try:
        record = yaml.safe_load(path.read_text())
        params = record["params"]
        study, run = record["study"], record["run"]
    except (yaml.YAMLError, KeyError, TypeError) as err:
        raise ConfirmError(f"{path}: not a study's best_params.yaml ({err})") from None
    if (study, run) != (settings.name, settings.study.run):
        raise ConfirmError(
            f"{path}: holds study {study!r} of run {run!r}, not {settings.name!r} of "
            f"{settings.study.run!r}; run the study: dvc repro tune@{settings.name}"
        )
    prefix = f"runs.{run}."
    return {**record, "params": {key.removeprefix(prefix): v for key, v in params.items()}}


def confirmation_settings(settings: StudySettings, record: dict[str, Any]) -> RunSettings:
    """The study's run with the best values of `record` (read_best_record), on
    `confirm_repeats` fresh seeds, named `<study>_best`."""
    base, values = settings.run.run, record["params"]
    try:
        run = run_with_values(base, values)
    except (ParamsError, ValueError) as err:  # the space changed since the study ran
        raise ConfirmError(
            f"study {settings.name}: its best values {values} no longer fit run "
            f"{settings.study.run!r} ({err}); run the study again: dvc repro tune@{settings.name}"
        ) from None
    run = run.model_copy(
        update={
            "seed": base.seed + settings.study.repeats,
            "repeats": settings.study.confirm_repeats,
        }
    )
    name = confirmation_name(settings.name)
    check_run(name, run, settings.run.dataset)
    tags = {STUDY_TAG: settings.name, TUNED_RUN_TAG: settings.study.run}
    if record.get("mlflow_study_run_id"):
        tags[STUDY_RUN_TAG] = record["mlflow_study_run_id"]
    return RunSettings(
        settings.profile, name, run, settings.run.dataset, settings.run.tracking, tags
    )
