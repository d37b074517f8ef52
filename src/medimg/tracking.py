"""MLflow tracking: the store, experiments, parent/child runs, callbacks, registry.

Tracking is a side concern: training code receives callbacks from here and
never calls MLflow itself.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import keras
import mlflow
import numpy as np
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Run
from mlflow.exceptions import MlflowException

import medimg
from medimg import paths

# MLflow's local store accepts 6,000 characters, but older servers and Databricks
# reject param values over 500; staying under the lower limit keeps runs portable.
MAX_PARAM_VALUE_LENGTH = 500
# Version tag written by `register_best`; the champion alias is chosen by it.
VAL_AUC_TAG = "medimg.best_val_auc"


class TrackingError(RuntimeError):
    """The MLflow store cannot be used (unreachable, unwritable, deleted experiment)."""


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else the project store sqlite:///<root>/mlruns/mlflow.db.

    MLflow 3 refuses the plain file store, hence sqlite; artifacts go under mlruns/.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{paths.mlruns_dir() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for an in-memory database)."""
    path = uri.removeprefix("sqlite:///")
    return None if path in ("", ":memory:") else Path(path)


def ensure_reachable(uri: str | None = None, timeout_s: float = 10) -> None:
    """Fail fast, naming `uri`, when the tracking store cannot be used.

    http(s): one GET of the server's /health endpoint (MLflow's own client would
    retry for minutes). sqlite: the database's folder must exist or be creatable
    and be writable. Other stores: one cheap query through MlflowClient.
    """
    uri = uri or tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
            response.raise_for_status()
        except requests.RequestException as err:
            raise TrackingError(
                f"MLflow tracking server {uri} is not reachable ({type(err).__name__}: {err}); "
                "start the server or point MLFLOW_TRACKING_URI at a running one"
            ) from None
    elif scheme == "sqlite":
        db = _sqlite_path(uri)
        if db is None:
            return
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingError(
                f"MLflow store {uri}: cannot create the folder {db.parent} ({err})"
            ) from None
        if not os.access(db.parent, os.W_OK):
            raise TrackingError(f"MLflow store {uri}: the folder {db.parent} is not writable")
    else:
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as err:  # any failure means the store is unusable; say which
            raise TrackingError(f"MLflow store {uri} is not usable: {err}") from None


def experiment_name(prefix: str, dataset: str) -> str:
    """One experiment per dataset, so runs on different data never share a table."""
    return f"{prefix}-{dataset}"


def artifact_location(name: str, uri: str | None = None) -> str | None:
    """Where a new experiment's artifacts go: <db folder>/artifacts/<name> for a sqlite store.

    For the default store this is mlruns/artifacts/<name>. For a tracking server
    it is None: the server decides (it may proxy artifacts to object storage).
    """
    uri = uri or tracking_uri()
    if urlparse(uri).scheme != "sqlite":
        return None
    db = _sqlite_path(uri)
    folder = (db.parent if db else paths.mlruns_dir()).resolve() / "artifacts"
    return f"{folder.as_uri()}/{quote(name)}"


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created (with `artifact_location`) when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location(name, client.tracking_uri)
            )
        except MlflowException:
            # Another worker may have created it between our lookup and create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} in {client.tracking_uri} is deleted; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
            "or delete it permanently (mlflow gc)"
        )
    return experiment.experiment_id


def flatten_params(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {"a.b.c": "value"}, each value at most MAX_PARAM_VALUE_LENGTH chars.

    Strings stay as they are; everything else is written as JSON (lists, tuples,
    booleans, None), so "[1.0, 1.2]" and "null" read back unambiguously. An
    over-long value is cut and ends in "...".
    """
    flat: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > MAX_PARAM_VALUE_LENGTH:
            text = text[: MAX_PARAM_VALUE_LENGTH - 3] + "..."
        flat[name] = text
    return flat


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(paths.root()), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _package_versions() -> dict[str, str]:
    """{distribution: version} of the packages a run depends on, those installed."""
    versions = {}
    # importlib.metadata reads versions without importing (and initialising) the packages.
    for distribution in ("keras", "mlflow", "numpy", "tensorflow", "tensorflow-cpu", "jax"):
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _device() -> str:
    """The accelerator Keras trains on, e.g. "gpu:0 (NVIDIA H200)" or "cpu:0"."""
    devices = keras.distribution.list_devices()
    if keras.backend.backend() == "jax":
        import jax  # only when JAX is the backend: it is then installed and initialised

        kinds = sorted({d.device_kind for d in jax.devices()})
        return f"{', '.join(devices)} ({', '.join(kinds)})"
    return ", ".join(devices)


def run_tags(
    run_name: str,
    dataset_fingerprint: str,
    split_protocol: str,
    seed: int | None = None,
) -> dict[str, str]:
    """Tags that say which code, data, software and hardware produced a run.

    The git commit is "unknown" outside a repository (or before its first commit).
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    tags = {
        "medimg.run": run_name,
        "medimg.version": medimg.__version__,
        "medimg.git_commit": commit or "unknown",
        "medimg.git_dirty": "unknown" if status is None else str(bool(status)).lower(),
        "medimg.dataset_fingerprint": dataset_fingerprint,
        "medimg.split_protocol": split_protocol,
        "medimg.keras_backend": keras.backend.backend(),
        "medimg.device": _device(),
    }
    tags.update({f"medimg.versions.{k}": v for k, v in _package_versions().items()})
    if seed is not None:
        tags["medimg.seed"] = str(seed)
    return tags


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs each epoch's Keras logs as MLflow metrics of one run, step = 1-based epoch.

    Names get an `epoch_` prefix (TensorBoard's convention): `epoch_val_accuracy`
    is the curve, while the evaluate stage logs the final `val_accuracy` of the
    chosen checkpoint to the same run. Keras passes the absolute epoch index,
    so a resumed fit continues the steps where the interrupted one stopped.
    """

    def __init__(self, run_id: str, tracking_uri: str | None = None) -> None:
        super().__init__()
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(key=f"epoch_{key}", value=float(value), timestamp=timestamp, step=epoch + 1)
            for key, value in (logs or {}).items()
            if isinstance(value, int | float) or getattr(value, "shape", None) == ()
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)


@contextmanager
def resumable_run(
    id_file: Path,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str],
    nested: bool = False,
) -> Iterator[Run]:
    """Start (or, when `id_file` holds a run id, resume) an active MLflow run.

    The id is written as soon as the run exists, so an interrupted training
    continues the same run (its metric steps included) instead of starting a new one.
    A run that raises is marked FAILED by MLflow; resuming sets it RUNNING again.
    """
    if id_file.is_file():
        with mlflow.start_run(run_id=id_file.read_text().strip(), nested=nested) as run:
            mlflow.set_tags(dict(tags))
            yield run
        return
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name, tags=dict(tags), nested=nested
    ) as run:
        id_file.parent.mkdir(parents=True, exist_ok=True)
        partial = id_file.with_name(id_file.name + ".tmp")
        partial.write_text(run.info.run_id)
        partial.replace(id_file)
        yield run


def log_keras_model(model: keras.Model, input_example: np.ndarray) -> str:
    """Log `model` to the active run with the MLflow Keras flavour; return its logged-model id.

    input_example: a few images, (n, H, W, C) uint8, as the model takes them.
    The signature is inferred from it and the model's output on it. The example
    itself is stored next to the model as input_example.npy rather than through
    log_model(input_example=...), which fails in MLflow's Keras flavour
    (mlflow/mlflow#16183: it writes the example before creating the folder).
    """
    from mlflow.models import infer_signature

    signature = infer_signature(input_example, np.asarray(model.predict(input_example, verbose=0)))
    info = mlflow.keras.log_model(
        model,
        name="model",
        signature=signature,
        # Given explicitly: MLflow would otherwise infer them by loading the model
        # in a subprocess, which takes seconds and can pick up unrelated packages.
        pip_requirements=[f"{name}=={v}" for name, v in _package_versions().items()],
    )
    with tempfile.TemporaryDirectory() as tmp:
        example_path = Path(tmp) / "input_example.npy"
        np.save(example_path, input_example)
        MlflowClient().log_model_artifact(info.model_id, str(example_path))
    return info.model_id


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
    """Register logged model `model_id` (of run `run_id`) as a new version of `name`.

    The version is tagged with run name, seed and validation AUC. Alias
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
    version = client.create_model_version(
        name,
        source=f"models:/{model_id}",
        run_id=run_id,
        model_id=model_id,
        tags={"medimg.run": run_name, "medimg.seed": str(seed), VAL_AUC_TAG: repr(best_val_auc)},
    )
    client.set_registered_model_alias(name, alias_name(f"{run_name}-best"), version.version)

    tagged = [v for v in client.search_model_versions(f"name = '{name}'") if VAL_AUC_TAG in v.tags]
    champion = max(tagged, key=lambda v: (float(v.tags[VAL_AUC_TAG]), -int(v.version)))
    client.set_registered_model_alias(name, champion_alias, champion.version)

    aliases = client.get_model_version(name, version.version).aliases
    return {"name": name, "version": int(version.version), "aliases": sorted(aliases)}
