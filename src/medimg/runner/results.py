"""The files passed between here and the GPU machine, as validated pydantic models.

    bundle/                      made here by `medimg gpu-bundle`
      bundle.json                BundleInfo
      params.yaml                the project's params.yaml, `profile:` set
      splits/<dataset>/<protocol>/{train,val,test}.csv, split_report.json

    results/                     written there by the runner, under $OUT
      manifest.json              RunnerManifest (device, backend, precision, timings)
      <run>/run.json             RunRecord (the configuration and its data)
      <run>/seed-<k>/result.json SeedRecord (fit timings, best epoch, val/test scalars)
      <run>/seed-<k>/metrics.json  val/test classification_metrics (confusion matrices...)
      <run>/seed-<k>/history.csv   one row per epoch (as fit_one_seed writes it)
      <run>/seed-<k>/predictions.npz  y and class probabilities of val and test, and
                                   the data's fingerprint (evaluation/predictions.py)
      <run>/seed-<k>/test_predictions.csv  each test image's path, class, predicted class
                                   and probabilities (evaluation/test_predictions.py)
      <run>/seed-<k>/*.png       confusion, ROC and PR curves of test, training curves

A seed folder appears whole or not at all (atomic.building), so a call cut off by
its time limit leaves only complete seeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from medimg.errors import UserError

BUNDLE_FILE = "bundle.json"
MANIFEST_FILE = "manifest.json"
RUN_FILE = "run.json"
SEED_FILE = "result.json"
SEED_METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"


class ResultsError(UserError, ValueError):
    """A bundle or results folder is missing a file or holds an invalid one."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BundleInfo(_Record):
    bundle_id: str  # sha256 of params.yaml and the split files: which data and settings
    profile: str
    git_commit: str
    created: str
    runs: list[str]
    datasets: dict[str, str]  # dataset -> its layout's name, to unpack an archive


class RunnerManifest(_Record):
    bundle_id: str
    profile: str
    git_commit: str
    device: str
    backend: str
    precision: str
    started: str
    finished: str | None = None
    command: str
    archives: dict[str, str]  # dataset -> "file name sha256"
    done: dict[str, list[int]] = {}  # run -> finished seeds
    left: dict[str, list[int]] = {}  # run -> seeds not started (time budget)
    prepare_seconds: dict[str, float] = {}


class RunRecord(_Record):
    run: str
    dataset: str
    split_protocol: str
    classes: list[str]
    config: dict[str, Any]  # RunConfig.model_dump(mode="json")
    model_options: dict[str, Any]  # with the schema's defaults
    prepare: dict[str, Any]
    split: dict[str, Any]
    data_meta: dict[str, Any]


class SeedRecord(_Record):
    seed: int
    best_epoch: int
    best_monitor: float
    best_train_accuracy: float
    epochs_run: int
    train_seconds: float
    images_per_second: float
    val: dict[str, float]
    test: dict[str, float]


Record = TypeVar("Record", bound=BaseModel)


def write_record(path: Path, record: BaseModel) -> None:
    path.write_text(record.model_dump_json(indent=2) + "\n")


def read_record(path: Path, kind: type[Record]) -> Record:
    """Read and validate a JSON record; ResultsError names the file and what is wrong."""
    if not path.is_file():
        raise ResultsError(f"{path}: not found")
    try:
        return kind.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as err:
        first = str(err).splitlines()[:3]
        raise ResultsError(f"{path}: not a valid {kind.__name__}: {' '.join(first)}") from None
