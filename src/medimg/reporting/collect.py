"""Our configurations as MLflow recorded them: parent run, repeat children, evaluation files.

Which runs: for each run name in params.yaml, the parent run that
models/<run>/summary.json names (the pipeline's latest training), plus every
parent run tagged medimg.imported=true (results trained on the GPU machine and
imported), the latest per run name and device. Nothing is read from hand-copied
numbers or from reports/: MLflow is the record.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from medimg import paths
from medimg.config.params import Params
from medimg.evaluation.statistics import Summary, summarize
from medimg.evaluation.test_predictions import (
    N_TEST_IMAGES_METRIC,
    TEST_PREDICTIONS_FILE,
    TestPredictions,
    read_test_predictions,
)
from medimg.reporting import ReportError
from medimg.tracking import store
from medimg.tuning.confirm import confirmation_name

SUMMARY_FILE = "summary.json"
PARENT_ID_TAG = "mlflow.parentRunId"
IMPORTED_TAG = "medimg.imported"
# Written by the evaluate stage on the parent run: the best seed's test predictions.
ROC_ARTIFACT = "evaluation/roc_test.csv"
CONFUSION_ARTIFACT = "evaluation/confusion_test.csv"
# Written by the evaluate stage (and the GPU runner) on each child run: every test image.
TEST_PREDICTIONS_ARTIFACT = f"evaluation/{TEST_PREDICTIONS_FILE}"
# Logged per epoch by the train stage's callback (and the importer) on each child run.
VAL_AUC_HISTORY_METRIC = "epoch_val_auc"
SAMPLE_PROFILE = "sample"
MLFLOW_UI_URL_ENV = "MLFLOW_UI_URL"
DEFAULT_MLFLOW_UI_URL = "http://127.0.0.1:5000"
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
UNKNOWN = "unknown"

Status = Literal["evaluated", "not evaluated", "not trained"]


@dataclass(frozen=True, eq=False)
class Configuration:
    """One training configuration's record: its parent run and one metrics dict per repeat.

    classes: the dataset's classes, in its label order.
    seeds: each repeat's seed, in the order of `children`.
    roc: the best seed's test ROC points (columns fpr, tpr, class), None when not logged.
    confusion: (K, K) test counts of the best seed, rows = actual, columns = predicted,
    in the dataset's class order; None when not logged.
    test_predictions: each repeat's per-image test predictions, in the order of
    `children`; None unless every repeat logged them.
    val_auc_histories: each repeat's validation AUC per epoch ((), when not logged).
    """

    name: str
    dataset: str
    status: Status
    classes: tuple[str, ...] = ()
    imported: bool = False
    experiment_id: str | None = None
    parent_run_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    children: tuple[Mapping[str, float], ...] = ()
    seeds: tuple[int, ...] = ()
    roc: pd.DataFrame | None = None
    confusion: np.ndarray | None = None
    test_predictions: tuple[TestPredictions, ...] | None = None
    val_auc_histories: tuple[tuple[float, ...], ...] = ()

    def tag(self, key: str) -> str:
        """Tag medimg.<key>, "unknown" when the run does not carry it."""
        return self.tags.get(f"medimg.{key}", UNKNOWN)

    @property
    def label(self) -> str:
        """The run name, and for an imported run where it was trained."""
        return f"{self.name} (imported, {self.tag('device')})" if self.imported else self.name

    @property
    def is_sample(self) -> bool:
        """Trained on the embedded sample: its numbers test the pipeline, not the model."""
        return self.tag("profile") == SAMPLE_PROFILE

    @property
    def tagged_label(self) -> str:
        """The label, with [sample] for a sample-profile configuration (tables, figures)."""
        return f"{self.label} [sample]" if self.is_sample else self.label

    def summary(self, metric: str) -> Summary | None:
        """`metric` over the repeats; None unless every repeat logged a finite value of it."""
        values = [child.get(metric) for child in self.children]
        if not values or any(value is None or not math.isfinite(value) for value in values):
            return None
        return summarize(values)

    def median(self, metric: str) -> float | None:
        values = [child[metric] for child in self.children if metric in child]
        return float(np.median(values)) if values else None

    def total(self, metric: str) -> float | None:
        values = [child[metric] for child in self.children if metric in child]
        return float(np.sum(values)) if values else None

    @property
    def image_size(self) -> int | None:
        """The model's input size: run.image_size, or the prepared size when that is null."""
        for key in ("run.image_size", "prepare.image_size"):
            value = self.params.get(key)
            if value not in (None, "null"):
                return int(value)
        return None

    @property
    def epochs(self) -> int | None:
        value = self.params.get("run.epochs")
        return None if value is None else int(value)

    @property
    def test_images(self) -> int | None:
        """The test-set size: the repeats' n_test_images, else their per-image predictions.

        None when neither was logged, or when the repeats disagree (then no size is true).
        """
        sizes = {child.get(N_TEST_IMAGES_METRIC) for child in self.children}
        if self.test_predictions is not None:
            sizes = (sizes - {None}) | {len(p) for p in self.test_predictions}
        return int(sizes.pop()) if len(sizes) == 1 and None not in sizes else None

    @property
    def weights(self) -> str:
        """run.model_options.weights: none, imagenet, a file or an MLflow URI."""
        return self.params.get("run.model_options.weights", "model default")

    def ui_url(self) -> str | None:
        """The parent run's page in the MLflow UI (MLFLOW_UI_URL, else a local `mlflow ui`)."""
        if self.parent_run_id is None:
            return None
        base = os.environ.get(MLFLOW_UI_URL_ENV, DEFAULT_MLFLOW_UI_URL).rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}/runs/{self.parent_run_id}"


def open_store(uri: str | None = None) -> MlflowClient:
    """A client of the tracking store; a ReportError or TrackingError when it cannot be read.

    A sqlite store must already exist: opening a missing one would create an empty
    database and report nothing, which would hide a wrong MLFLOW_TRACKING_URI.
    """
    uri = uri or store.tracking_uri()
    store.require_existing_store(
        uri, "train first (dvc repro) or point MLFLOW_TRACKING_URI at the store that holds the runs"
    )
    store.ensure_reachable(uri)
    return MlflowClient(uri)


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> Iterator[Run]:
    """Every run matching `filter_string`, following MLflow's pages."""
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


@contextmanager
def _without_progress_bars() -> Iterator[None]:
    """MLflow draws a progress bar per downloaded file: noise for a few small CSV files.

    A value the user set for MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR is kept.
    """
    if PROGRESS_BAR_ENV in os.environ:
        yield
        return
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        os.environ.pop(PROGRESS_BAR_ENV, None)


def _read_csv_artifact(client: MlflowClient, run_id: str, path: str) -> pd.DataFrame | None:
    with tempfile.TemporaryDirectory() as tmp:
        downloaded = _download(client, run_id, path, tmp)
        return None if downloaded is None else pd.read_csv(downloaded)


def _download(client: MlflowClient, run_id: str, path: str, tmp: str) -> Path | None:
    """The artifact `path` of a run downloaded under `tmp`; None when the run has none."""
    folder = path.rsplit("/", 1)[0]
    if path not in {info.path for info in client.list_artifacts(run_id, folder)}:
        return None
    with _without_progress_bars():
        return Path(client.download_artifacts(run_id, path, tmp))


def _test_predictions(
    client: MlflowClient, children: list[Run], classes: list[str]
) -> tuple[TestPredictions, ...] | None:
    """Each child's per-image test predictions; None unless every child logged them."""
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for child in children:
            run_id = child.info.run_id
            path = _download(client, run_id, TEST_PREDICTIONS_ARTIFACT, tmp)
            if path is None:
                return None
            try:
                found.append(read_test_predictions(path, classes))
            except ValueError as err:
                raise ReportError(f"run {run_id} {TEST_PREDICTIONS_ARTIFACT}: {err}") from None
    return tuple(found)


def _val_auc_history(client: MlflowClient, run_id: str) -> tuple[float, ...]:
    history = client.get_metric_history(run_id, VAL_AUC_HISTORY_METRIC)
    return tuple(m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp)))


def _confusion_counts(frame: pd.DataFrame, classes: list[str], where: str) -> np.ndarray:
    """(K, K) counts from one row per image (columns actual, predicted; class names)."""
    missing = {"actual", "predicted"} - set(frame.columns)
    if missing:
        raise ReportError(f"{where}: lacks columns {sorted(missing)}; has {list(frame.columns)}")
    unknown = (set(frame["actual"]) | set(frame["predicted"])) - set(classes)
    if unknown:
        raise ReportError(f"{where}: classes {sorted(unknown)} are not in params.yaml {classes}")
    index = {name: k for k, name in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(counts, (frame["actual"].map(index), frame["predicted"].map(index)), 1)
    return counts


def _configuration(
    client: MlflowClient, parent: Run, dataset: str, classes: list[str], imported: bool
) -> Configuration:
    """The record of one parent run: its children's metrics and its evaluation files."""
    run_id, experiment_id = parent.info.run_id, parent.info.experiment_id
    children = sorted(
        _search(client, [experiment_id], f"tags.`{PARENT_ID_TAG}` = '{run_id}'"),
        key=lambda child: int(child.data.tags.get("medimg.seed", 0)),
    )
    metrics = tuple(dict(child.data.metrics) for child in children)
    evaluated = bool(metrics) and all("test_accuracy" in m for m in metrics)
    roc = confusion = test_predictions = None
    if evaluated:
        roc = _read_csv_artifact(client, run_id, ROC_ARTIFACT)
        rows = _read_csv_artifact(client, run_id, CONFUSION_ARTIFACT)
        if rows is not None:
            confusion = _confusion_counts(rows, classes, f"run {run_id} {CONFUSION_ARTIFACT}")
        test_predictions = _test_predictions(client, children, classes)
    return Configuration(
        name=parent.data.tags.get("medimg.run", parent.info.run_name),
        dataset=dataset,
        status="evaluated" if evaluated else "not evaluated",
        classes=tuple(classes),
        imported=imported,
        experiment_id=experiment_id,
        parent_run_id=run_id,
        tags=dict(parent.data.tags),
        params=dict(parent.data.params),
        children=metrics,
        seeds=tuple(int(child.data.tags.get("medimg.seed", 0)) for child in children),
        roc=roc,
        confusion=confusion,
        test_predictions=test_predictions,
        val_auc_histories=tuple(_val_auc_history(client, c.info.run_id) for c in children),
    )


def _parent_of_summary(client: MlflowClient, run_name: str) -> Run | None:
    """The parent run named by models/<run>/summary.json; None when not trained yet."""
    path = paths.models_dir(run_name) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        run_id = json.loads(path.read_text())["parent_run_id"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ReportError(f"{path}: no parent_run_id ({type(err).__name__}: {err})") from None
    try:
        return client.get_run(run_id)
    except MlflowException as err:
        raise ReportError(
            f"{path}: parent run {run_id} is not in the tracking store "
            f"{store.masked_uri(client.tracking_uri)} "
            f"({err.message}); point MLFLOW_TRACKING_URI at the store the pipeline used"
        ) from None


def _latest_imported(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Imported parent runs of one experiment, the latest per (run name, device)."""
    latest: dict[tuple[str, str], Run] = {}
    for run in _search(client, [experiment_id], f"tags.`{IMPORTED_TAG}` = 'true'"):
        tags = run.data.tags
        if PARENT_ID_TAG in tags:  # a repeat, not a configuration
            continue
        key = (tags.get("medimg.run", run.info.run_name), tags.get("medimg.device", UNKNOWN))
        if key not in latest or run.info.start_time > latest[key].info.start_time:
            latest[key] = run
    return sorted(latest.values(), key=lambda run: run.info.start_time)


def _confirmation(
    client: MlflowClient, params: Params, study_name: str, run_name: str
) -> Configuration:
    """A study's confirmation run (<study>_best, stage confirm@<study>)."""
    name = confirmation_name(study_name)
    dataset = params.run(run_name).dataset
    classes = params.dataset(dataset).classes
    parent = _parent_of_summary(client, name)
    if parent is None:
        return Configuration(
            name=name, dataset=dataset, status="not trained", classes=tuple(classes)
        )
    return _configuration(client, parent, dataset, classes, imported=False)


def collect_configurations(client: MlflowClient, params: Params) -> list[Configuration]:
    """The pipeline's configuration of every run in params.yaml, each study's confirmation
    (<study>_best), then imported ones.

    Order: params.yaml's, the studies', then imported runs oldest first.
    """
    experiments = {}
    for dataset in params.datasets:
        name = store.experiment_name(params.tracking.experiment_prefix, dataset)
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            experiments[dataset] = experiment.experiment_id

    found = []
    for run_name, run in params.runs.items():
        parent = _parent_of_summary(client, run_name)
        classes = params.dataset(run.dataset).classes
        if parent is None:
            found.append(
                Configuration(
                    name=run_name, dataset=run.dataset, status="not trained", classes=tuple(classes)
                )
            )
        else:
            found.append(_configuration(client, parent, run.dataset, classes, imported=False))
    for study_name, study in params.tune.items():
        found.append(_confirmation(client, params, study_name, study.run))
    for dataset, experiment_id in experiments.items():
        classes = params.dataset(dataset).classes
        for parent in _latest_imported(client, experiment_id):
            found.append(_configuration(client, parent, dataset, classes, imported=True))
    return found
