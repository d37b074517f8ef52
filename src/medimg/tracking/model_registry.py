"""The model registry: each configuration's best seed a version, the champion alias by
validation AUC (the test split never chooses a model)."""

from __future__ import annotations

import math
import re
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

# Version tag written by `register_best`; the champion alias is chosen by it.
VAL_AUC_TAG = "medimg.best_val_auc"


def registered_model_name(prefix: str, dataset: str) -> str:
    return f"{prefix}-{dataset}"


def alias_name(text: str) -> str:
    """`text` made a valid registry alias: only letters, digits, _ and -; at most 255 chars."""
    alias = re.sub(r"[^\w\-]", "-", text)[:255]
    if not alias or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ValueError(f"{text!r} cannot be made a model alias ({alias!r} is reserved or empty)")
    return alias


def register_best(
    client: MlflowClient,
    model_id: str,
    run_id: str,
    name: str,
    run_name: str,
    seed: int,
    best_val_auc: float,
    champion_alias: str = "champion",
) -> dict[str, Any]:
    """Register logged model `model_id` (of run `run_id`) as a version of `name`, once.

    A version of `name` registered from this model before (by a stage killed before
    it could record the version) is reused rather than registered again. The version
    is tagged with run name, seed and validation AUC. Alias
    f"{run_name}-best" points at it; `champion_alias` points at the version with
    the highest validation AUC among all versions of `name` carrying that tag
    (earliest version on ties, so the champion only moves on a real improvement).
    The test split never takes part in this choice.

    Returns {"name", "version", "aliases"} with the aliases now on this version.
    """
    if not math.isfinite(best_val_auc):
        raise ValueError(f"{run_name} seed {seed}: best_val_auc is {best_val_auc}, not a number")
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    version = registered_version(client, name, model_id, run_id)
    if version is None:
        version = client.create_model_version(
            name,
            source=f"models:/{model_id}",
            run_id=run_id,
            model_id=model_id,
            tags={
                "medimg.run": run_name,
                "medimg.seed": str(seed),
                VAL_AUC_TAG: repr(best_val_auc),
            },
        )
    client.set_registered_model_alias(name, alias_name(f"{run_name}-best"), version.version)

    tagged = [v for v in client.search_model_versions(f"name = '{name}'") if VAL_AUC_TAG in v.tags]
    champion = max(tagged, key=lambda v: (float(v.tags[VAL_AUC_TAG]), -int(v.version)))
    client.set_registered_model_alias(name, champion_alias, champion.version)

    aliases = client.get_model_version(name, version.version).aliases
    return {"name": name, "version": int(version.version), "aliases": sorted(aliases)}


def registered_version(
    client: MlflowClient, name: str, model_id: str, run_id: str
) -> ModelVersion | None:
    """The version of `name` registered from logged model `model_id` of run `run_id`, if any."""
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if version.source == f"models:/{model_id}":
            return version
    return None
