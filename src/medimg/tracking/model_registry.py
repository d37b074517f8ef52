"""The model registry: each configuration's best seed a version, the champion alias by
validation AUC (the test split never chooses a model)."""

from __future__ import annotations

import math
import re
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from medimg.tracking.store import current_store

# Version tag written by `register_best`; the champion alias is chosen by it.
VAL_AUC_TAG = "medimg.best_val_auc"
# Version tag of a model trained by a DVC experiment in a temporary copy (--queue, --temp):
# the experiment's name. Such a version never becomes the champion (README, "Sweeps").
EXPERIMENT_COPY_TAG = "medimg.dvc_experiment_copy"


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
    experiment_copy: str | None = None,
) -> dict[str, Any]:
    """Register logged model `model_id` (of run `run_id`) as a version of `name`, once.

    A version of `name` registered from this model before (by a stage killed before
    it could record the version) is reused rather than registered again. The version
    is tagged with run name, seed and validation AUC. Alias
    f"{run_name}-best" points at it; `champion_alias` points at the version with
    the highest validation AUC among all versions of `name` carrying that tag
    (earliest version on ties, so the champion only moves on a real improvement),
    versions of experiment copies left out. The test split never takes part in this choice.

    experiment_copy: the name of the DVC experiment whose temporary copy trained the
    model (`dvc exp run --queue` / `--temp`, whose results nobody has applied yet). Its
    version is tagged with it (EXPERIMENT_COPY_TAG), gets the alias
    f"{run_name}-exp-{experiment_copy}" instead, and leaves the champion where it is.

    Returns {"name", "version", "aliases"} with the aliases now on this version.
    """
    if not math.isfinite(best_val_auc):
        raise ValueError(f"{run_name} seed {seed}: best_val_auc is {best_val_auc}, not a number")
    _get_or_create_registered_model(client, name)
    version = registered_version(client, name, model_id, run_id)
    if version is None:
        tags = {"medimg.run": run_name, "medimg.seed": str(seed), VAL_AUC_TAG: repr(best_val_auc)}
        if experiment_copy is not None:
            tags[EXPERIMENT_COPY_TAG] = experiment_copy
        # MLflow resolves the source (models:/<id>) against its process-wide store, not
        # the client's.
        with current_store(client.tracking_uri):
            version = client.create_model_version(
                name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id, tags=tags
            )
    suffix = "best" if experiment_copy is None else f"exp-{experiment_copy}"
    client.set_registered_model_alias(name, alias_name(f"{run_name}-{suffix}"), version.version)

    if experiment_copy is None:
        candidates = [
            v
            for v in client.search_model_versions(f"name = '{name}'")
            if VAL_AUC_TAG in v.tags and EXPERIMENT_COPY_TAG not in v.tags
        ]
        champion = max(candidates, key=lambda v: (float(v.tags[VAL_AUC_TAG]), -int(v.version)))
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


def _get_or_create_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name)
        except MlflowException:
            # Another process (a parallel DVC experiment) created it since the lookup.
            client.get_registered_model(name)
