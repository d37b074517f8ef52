"""Here: log a results folder written by the GPU runner into the MLflow store.

Each run of the folder becomes (or joins) a parent run tagged `medimg.imported=true`
with the device, backend and precision it ran on, one child per seed with its
params, per-epoch curves, best-epoch values, val/test metrics, timings and files,
laid out like the train and evaluate stages' runs so `medimg report` and the
MLflow UI compare them with local runs. The runner's chunks (one device call
each) of the same bundle, run and device join one parent; importing a folder
twice adds nothing (each seed carries an import key).
"""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric

from medimg.config.runs import RunConfig
from medimg.evaluation.parent_metrics import parent_metrics, save_headline_view
from medimg.evaluation.predictions import PREDICTIONS_FILE, read_predictions
from medimg.evaluation.test_predictions import N_TEST_IMAGES_METRIC
from medimg.runner.results import (
    HISTORY_FILE,
    MANIFEST_FILE,
    RUN_FILE,
    SEED_FILE,
    ResultsError,
    RunnerManifest,
    RunRecord,
    SeedRecord,
    read_record,
)
from medimg.tracking import batch, runs, store

GROUP_TAG = "medimg.import_group"
SEED_KEY_TAG = "medimg.import_seed_key"


def _millis(stamp: str | None) -> int:
    if not stamp:
        return int(time.time() * 1000)
    return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp() * 1000)


def _group_key(manifest: RunnerManifest, run: str) -> str:
    text = "\0".join(
        [manifest.bundle_id, run, manifest.device, manifest.backend, manifest.precision]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _parent(
    client: MlflowClient, experiment_id: str, manifest: RunnerManifest, record: RunRecord
) -> str:
    """The parent run of this bundle, run and device: found by its group tag, else created."""
    group = _group_key(manifest, record.run)
    found = client.search_runs([experiment_id], f"tags.`{GROUP_TAG}` = '{group}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {
        "medimg.role": "parent",
        "medimg.run": record.run,
        "medimg.imported": "true",
        "medimg.dataset": record.dataset,
        "medimg.model": record.config["model"],
        "medimg.profile": manifest.profile,
        "medimg.split_protocol": record.split_protocol,
        "medimg.dataset_fingerprint": str(record.data_meta.get("source_fingerprint")),
        "medimg.git_commit": manifest.git_commit,
        "medimg.device": manifest.device,
        "medimg.keras_backend": manifest.backend,
        "medimg.precision": manifest.precision,
        "medimg.runner_command": manifest.command[: runs.MAX_PARAM_VALUE_LENGTH],
        "mlflow.runName": record.run,
        GROUP_TAG: group,
    }
    run = client.create_run(experiment_id, start_time=_millis(manifest.started), tags=tags)
    parent_params = {"run": record.config, "prepare": record.prepare, "split": record.split}
    params = batch.params_of(runs.flatten_params(parent_params))
    batch.log_batch(client, run.info.run_id, params=params)
    return run.info.run_id


def _n_test_images(folder: Path) -> int:
    """The seed's test-set size, from its predictions.npz (every runner version writes it)."""
    try:
        predictions, _ = read_predictions(folder / PREDICTIONS_FILE)
    except (OSError, ValueError) as err:
        raise ResultsError(str(err)) from None  # the message names the file
    return len(predictions.y["test"])


def _seed_metrics(
    seed: SeedRecord, history: pd.DataFrame, n_test_images: int, stamp: int
) -> list[Metric]:
    metrics = [
        Metric(f"epoch_{column}", float(value), stamp, int(epoch) + 1)
        for column in history.columns
        if column != "epoch"
        for epoch, value in zip(history["epoch"], history[column], strict=True)
    ]
    best = history.iloc[seed.best_epoch - 1]
    values = {
        **{
            f"best_{k}": float(best[k])
            for k in ("val_auc", "val_accuracy", "val_loss")
            if k in best
        },
        "best_epoch": seed.best_epoch,
        "best_train_accuracy": seed.best_train_accuracy,
        "train_seconds": seed.train_seconds,
        "images_per_second": seed.images_per_second,
        **{f"val_{k}": v for k, v in seed.val.items()},
        **{f"test_{k}": v for k, v in seed.test.items()},
        N_TEST_IMAGES_METRIC: n_test_images,
    }
    return metrics + [Metric(k, float(v), stamp, 0) for k, v in values.items()]


def _import_seed(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str,
    record: RunRecord,
    manifest: RunnerManifest,
    folder: Path,
) -> SeedRecord:
    seed = read_record(folder / SEED_FILE, SeedRecord)
    key = f"{_group_key(manifest, record.run)}:{seed.seed}"
    if client.search_runs([experiment_id], f"tags.`{SEED_KEY_TAG}` = '{key}'", max_results=1):
        return seed  # imported before
    tags = {
        "mlflow.parentRunId": parent_id,
        "mlflow.runName": f"{record.run}/seed-{seed.seed}",
        "medimg.role": "child",
        "medimg.seed": str(seed.seed),
        "medimg.run": record.run,
        "medimg.imported": "true",
        "medimg.device": manifest.device,
        "medimg.keras_backend": manifest.backend,
        "medimg.precision": manifest.precision,
        SEED_KEY_TAG: key,
    }
    stamp = _millis(manifest.started)
    child = client.create_run(experiment_id, start_time=stamp, tags=tags).info.run_id
    effective = {
        **record.config,
        "model_options": record.model_options,
        "seed": seed.seed,
        "image_size": RunConfig.model_validate(record.config).input_size(
            record.data_meta["image_size"]
        ),
    }
    params = batch.params_of(runs.flatten_params(effective))
    history = pd.read_csv(folder / HISTORY_FILE)
    metrics = _seed_metrics(seed, history, _n_test_images(folder), stamp)
    batch.log_batch(client, child, metrics=metrics, params=params)
    client.log_artifacts(child, str(folder), "evaluation")
    client.set_terminated(child, "FINISHED", end_time=stamp + int(seed.train_seconds * 1000))
    return seed


def _aggregates(client: MlflowClient, experiment_id: str, parent_id: str) -> list[Metric]:
    """The parent's headline (medimg.evaluation.parent_metrics) over all its children,
    imported now or before (a run's seeds may come in several chunks), as the local
    stages log it, and the means of the training's own figures."""
    children = [
        run.data.metrics
        for run in client.search_runs(
            [experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000
        )
    ]
    if not children:
        return []
    stamp = int(time.time() * 1000)
    metrics = [Metric(key, value, stamp, 0) for key, value in parent_metrics(children).items()]
    for name in ("best_train_accuracy", "images_per_second", "train_seconds"):
        values = [c[name] for c in children if name in c]
        if values:
            metrics.append(Metric(f"{name}_mean", sum(values) / len(values), stamp, 0))
    return metrics


def import_results(source: Path, experiment_prefix: str = "medimg") -> dict[str, str]:
    """Log every run of a runner results folder, or of the .tar.gz the device call packed it
    into; returns {run name: parent run id}."""
    source = Path(source)
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(source) as archive:
                archive.extractall(tmp, filter="data")  # no links or paths outside tmp
            manifests = sorted(Path(tmp).rglob(MANIFEST_FILE))
            if len(manifests) != 1:
                raise ResultsError(
                    f"{source}: expected one results folder (one {MANIFEST_FILE}) inside, "
                    f"found {len(manifests)}"
                )
            return _import_folder(manifests[0].parent, experiment_prefix)
    return _import_folder(source, experiment_prefix)


def _import_folder(folder: Path, experiment_prefix: str) -> dict[str, str]:
    manifest = read_record(folder / MANIFEST_FILE, RunnerManifest)
    run_dirs = sorted(p.parent for p in folder.glob(f"*/{RUN_FILE}"))
    if not run_dirs:
        raise ResultsError(f"{folder}: no <run>/{RUN_FILE} inside: not a runner results folder")
    uri = store.tracking_uri()
    store.ensure_reachable(uri)
    client = MlflowClient(uri)
    parents = {}
    for run_dir in run_dirs:
        record = read_record(run_dir / RUN_FILE, RunRecord)
        experiment_id = store.get_or_create_experiment(
            client, store.experiment_name(experiment_prefix, record.dataset)
        )
        parent = _parent(client, experiment_id, manifest, record)
        for seed_dir in sorted(run_dir.glob("seed-*")):
            if (seed_dir / SEED_FILE).is_file():
                _import_seed(client, experiment_id, parent, record, manifest, seed_dir)
        batch.log_batch(client, parent, metrics=_aggregates(client, experiment_id, parent))
        save_headline_view(client, experiment_id)
        for extra in sorted(folder.glob("*.txt")):  # e.g. the device's throughput figures
            client.log_artifact(parent, str(extra), "runner")
        client.set_terminated(parent, "FINISHED")
        parents[record.run] = parent
    return parents
