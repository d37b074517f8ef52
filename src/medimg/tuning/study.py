"""A study's identity in the storage, its sampler and its pruner.

The study's name in the storage is `<study>-<digest>`, the digest being that of
everything that gives a trial's value its meaning: the study entry (less n_trials
and timeout_s, which only say how long to search), the tuned run less the keys the
space searches (and less repeats and prediction_examples, which trials do not use),
and the prepared data. So `medimg tune` resumes its study as long as that holds, and
starts a new one, instead of mixing incomparable trials, when it changes. Applying
the best values to the run (reports.apply_command) keeps the digest.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from typing import Any

import optuna

from medimg.config.runs import RunConfig
from medimg.config.studies import (
    HyperbandPrunerConfig,
    MedianPrunerConfig,
    RandomSamplerConfig,
    StudyConfig,
    TpeSamplerConfig,
)
from medimg.data.prepared import PreparedData
from medimg.errors import UserError

# Run keys that do not change a trial: left out of the study's digest.
RUN_KEYS_UNUSED_BY_TRIALS = ("repeats", "prediction_examples")
DEFINITION_ATTR = "medimg.definition"


class TuneStudyError(UserError, RuntimeError):
    """The study cannot run as configured (a sampler whose library is missing)."""


def study_definition(study: StudyConfig, run: RunConfig, data: PreparedData) -> dict[str, Any]:
    """What gives a trial's value its meaning (see the module docstring).

    Values at their defaults are left out, so that a release adding a run option
    with a default (which changes no training) keeps the studies it finds.
    """
    fixed_run = run.model_dump(mode="json", exclude_defaults=True)
    fixed_run["model_options"] = run.options().model_dump(mode="json", exclude_defaults=True)
    for key in (*study.space, *RUN_KEYS_UNUSED_BY_TRIALS):
        *parents, leaf = key.split(".")
        node = fixed_run
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return {
        "study": study.model_dump(
            mode="json", exclude={"n_trials", "timeout_s"}, exclude_defaults=True
        ),
        "run": fixed_run,
        "data": {
            "fingerprint": data.meta.get("source_fingerprint"),
            "image_size": data.image_size,
            "counts": data.meta.get("counts"),
        },
    }


def storage_study_name(name: str, definition: dict[str, Any]) -> str:
    """`<name>-<first 8 hex digits of the definition's sha256>`."""
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def check_sampler_available(name: str, study: StudyConfig) -> None:
    """GPSampler needs PyTorch, which medimg does not install: say so before any trial."""
    if study.sampler.name == "gp" and importlib.util.find_spec("torch") is None:
        raise TuneStudyError(
            f"tune.{name}.sampler.name = 'gp' needs PyTorch (Optuna's GPSampler): "
            "pip install torch, or use 'tpe' or 'random'"
        )


def build_sampler(study: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The study's sampler seeded with `seed`.

    The caller builds one per trial with seed = sampler.seed + trials so far, so a
    study run by one worker draws the same values on every machine and after a resume.
    constant_liar: parallel workers treat each other's running trials as bad, so they
    do not all sample the same region.
    """
    cfg = study.sampler
    if isinstance(cfg, TpeSamplerConfig):
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=cfg.n_startup_trials, constant_liar=True
        )
    if isinstance(cfg, RandomSamplerConfig):
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)


def build_pruner(study: StudyConfig, steps_per_trial: int) -> optuna.pruners.BasePruner:
    """The study's pruner; a step is an epoch, steps_per_trial = repeats * epochs."""
    cfg = study.pruner
    if isinstance(cfg, MedianPrunerConfig):
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps
        )
    if isinstance(cfg, HyperbandPrunerConfig):
        return optuna.pruners.HyperbandPruner(
            min_resource=cfg.min_resource,
            max_resource=steps_per_trial,
            reduction_factor=cfg.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def open_study(
    storage: optuna.storages.BaseStorage,
    storage_name: str,
    study: StudyConfig,
    definition: dict[str, Any],
    steps_per_trial: int,
) -> optuna.Study:
    """Create the study, or load it when it exists (another worker, an earlier call)."""
    opened = optuna.create_study(
        storage=storage,
        study_name=storage_name,
        direction=study.study_direction,
        pruner=build_pruner(study, steps_per_trial),
        sampler=build_sampler(study, study.sampler.seed),
        load_if_exists=True,
    )
    if DEFINITION_ATTR not in opened.user_attrs:
        opened.set_user_attr(DEFINITION_ATTR, definition)
    if opened.metric_names is None:
        # The dashboard's name for the value (else "Objective 0"); MLflow's trial runs log
        # the same value under this name. "Experimental" in Optuna 5.0, used on purpose.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            opened.set_metric_names([objective_metric_name(study)])
    return opened


def objective_metric_name(study: StudyConfig) -> str:
    """What a trial's value is, e.g. val_roc_auc: the objective on the validation split."""
    return f"val_{study.objective}"
