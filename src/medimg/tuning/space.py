"""Values for one trial from a study's search space (`tune.<study>.space` in params.yaml)."""

from __future__ import annotations

from typing import Any

import optuna

from medimg.config.studies import SearchDimension


def suggest_value(trial: optuna.Trial, key: str, dimension: SearchDimension) -> Any:
    """Sample `key` from `dimension`: categorical, integer or float (log or stepped)."""
    if dimension.choices is not None:
        return trial.suggest_categorical(key, dimension.choices)
    if dimension.is_int:
        return trial.suggest_int(
            key, dimension.low, dimension.high, step=dimension.step or 1, log=dimension.log
        )
    return trial.suggest_float(
        key, float(dimension.low), float(dimension.high), step=dimension.step, log=dimension.log
    )


def suggest_values(trial: optuna.Trial, space: dict[str, SearchDimension]) -> dict[str, Any]:
    """{dotted run key: sampled value} for every key of `space`, in the space's order.

    The Optuna parameter is named by the dotted key itself ("model_options.dropout"),
    so the dashboard and the MLflow params read the same as params.yaml.
    """
    return {key: suggest_value(trial, key, dimension) for key, dimension in space.items()}
