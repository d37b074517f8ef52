"""One seed's per-image test predictions as a small CSV: what the report's paired statistics read.

Written by the evaluate stage (and the GPU runner) into each seed's folder, so it is
logged to the seed's child run as `evaluation/test_predictions.csv`; the report
downloads it from MLflow. One row per test image, in the prepared test split's order:

    path                    the image's path in data/raw/<dataset>/ (the prepared
                            test.csv's `path`): which image it is, so that two
                            configurations are paired only when tested on the same images
    actual, predicted       class names; `predicted` is the class the seed's metrics
                            counted (its decision rule applied), so accuracy recomputed
                            from the file is the logged test_accuracy
    proba_<class>           the class probabilities, one column per class in the
                            dataset's class order, with 9 significant digits: a float32
                            reads back as the same float32, so the order and ties of
                            the scores, hence ROC AUC, are kept

No metrics here, and no deep-learning framework: the report reads this file too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TEST_PREDICTIONS_FILE = "test_predictions.csv"
# Logged beside the file on each child run: the test-set size (named unlike the
# test_<metric> values, as it describes the data rather than the model).
N_TEST_IMAGES_METRIC = "n_test_images"
PROBA_PREFIX = "proba_"
FLOAT_FORMAT = "%.9g"  # 9 significant digits tell every two float32 values apart


@dataclass(frozen=True)
class TestPredictions:
    """One seed on the test split: paths (N,) str, labels and predicted (N,) int class
    indices, proba (N, K) float64 in the dataset's class order."""

    __test__ = False  # not a pytest test class, despite its name

    paths: tuple[str, ...]
    labels: np.ndarray
    predicted: np.ndarray
    proba: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def columns(classes: Sequence[str]) -> list[str]:
    """The file's columns for `classes`: path, actual, predicted, proba_<class>..."""
    return ["path", "actual", "predicted", *[f"{PROBA_PREFIX}{name}" for name in classes]]


def prepared_test_paths(
    prepared_dir: Path, labels: np.ndarray, classes: Sequence[str]
) -> list[str]:
    """The image path of each row of `prepared_dir`'s test arrays, from its test.csv.

    Checked against `labels` (N,): the same number of rows and the same class in each,
    so a path can never be attached to another image's prediction. ValueError names
    the file otherwise.
    """
    path = Path(prepared_dir) / "test.csv"
    if not path.is_file():
        raise ValueError(f"{path}: not found; the augment stage writes it beside test_y.npy")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: lacks columns {sorted(missing)}; has {list(table.columns)}")
    if len(table) != len(labels):
        raise ValueError(f"{path}: {len(table)} rows, but the test arrays hold {len(labels)}")
    expected = [classes[int(k)] for k in labels]
    wrong = np.flatnonzero(table["label"].to_numpy() != np.asarray(expected, dtype=object))
    if len(wrong):
        row = int(wrong[0])
        raise ValueError(
            f"{path}: row {row} ({table['path'][row]}) is labelled {table['label'][row]!r} "
            f"but test_y.npy says {expected[row]!r}: the csv and the arrays disagree"
        )
    return table["path"].tolist()


def write_test_predictions(
    path: Path,
    image_paths: Sequence[str],
    labels: np.ndarray,
    predicted: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
) -> None:
    """Write one seed's test predictions: labels, predicted (N,) class indices, proba (N, K).

    Plain write: callers write into a staging folder (atomic.building).
    """
    proba = np.asarray(proba)
    if proba.shape != (len(labels), len(classes)) or len(image_paths) != len(labels):
        raise ValueError(
            f"{len(image_paths)} paths, labels {np.shape(labels)}, predicted "
            f"{np.shape(predicted)} and proba {proba.shape} do not describe the same "
            f"{len(labels)} images of {len(classes)} classes"
        )
    names = np.asarray(classes, dtype=object)
    frame = pd.DataFrame(
        {
            "path": list(image_paths),
            "actual": names[np.asarray(labels, dtype=np.int64)],
            "predicted": names[np.asarray(predicted, dtype=np.int64)],
        }
    )
    for k, name in enumerate(classes):
        frame[f"{PROBA_PREFIX}{name}"] = proba[:, k]
    frame.to_csv(path, index=False, float_format=FLOAT_FORMAT)


def read_test_predictions(path: Path, classes: Sequence[str]) -> TestPredictions:
    """Read a write_test_predictions file made for `classes`; ValueError naming it otherwise."""
    try:
        table = pd.read_csv(
            path, keep_default_na=False, dtype={"path": str}, float_precision="round_trip"
        )
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: cannot be read as test predictions: {err}") from None
    expected = columns(classes)
    if list(table.columns) != expected:
        raise ValueError(f"{path}: columns {list(table.columns)}; expected {expected}")
    index = {name: k for k, name in enumerate(classes)}
    unknown = (set(table["actual"]) | set(table["predicted"])) - set(classes)
    if unknown:
        raise ValueError(f"{path}: classes {sorted(unknown)} are not among {list(classes)}")
    try:
        proba = table[expected[3:]].to_numpy(dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{path}: a probability is not a number: {err}") from None
    return TestPredictions(
        paths=tuple(table["path"]),
        labels=table["actual"].map(index).to_numpy(dtype=np.int64),
        predicted=table["predicted"].map(index).to_numpy(dtype=np.int64),
        proba=proba,
    )
