"""Classification metrics: pure functions on numpy arrays, scikit-learn underneath.

Conventions used throughout:
- `y_true` is (N,) int, a label index into `class_names`; `proba` is (N, K) with
  K == len(class_names) and rows summing to 1 (binary models give 2 columns).
- The predicted class is the argmax of `proba` (binary: PNEUMONIA when p > 0.5).
- Binary tasks report precision, recall, specificity, f1, roc_auc and pr_auc for
  the positive class (index 1); multiclass tasks report macro averages, plus
  micro-averaged roc_auc and pr_auc. Both report every class one-vs-rest in
  `per_class`.
- Count ratios with a zero denominator (a class never predicted, or absent from
  `y_true`) are 0, as scikit-learn's `zero_division=0`. Ranking metrics (roc_auc,
  pr_auc) of a class absent from `y_true` are undefined: NaN, explained in
  `notes`, and left out of the macro average (the note says so).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from medimg.evaluation.statistics import summarize

# Rows of float32 softmax/sigmoid outputs sum to 1 only to about 1e-7; a larger
# gap means the input is not probabilities at all.
PROBA_SUM_TOLERANCE = 1e-3

# Per-class metrics that `scalar_metrics` flattens to "<metric>_<class>".
PER_CLASS_SCALARS = ("precision", "recall", "specificity", "f1", "roc_auc", "pr_auc")


def validate_predictions(
    y_true: np.ndarray, proba: np.ndarray, class_names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and ranges; return (y_true int64 (N,), proba float64 (N, K))."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError(f"class_names needs at least 2 classes, got {class_names}")
    if y_true.ndim != 1 or not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(
            f"y_true must be a 1-D integer array of label indices, got shape {y_true.shape} "
            f"dtype {y_true.dtype}"
        )
    if proba.ndim != 2 or proba.shape != (len(y_true), num_classes):
        raise ValueError(
            f"proba must have shape (N, K) = ({len(y_true)}, {num_classes}) for {num_classes} "
            f"classes {class_names}, got {proba.shape}"
        )
    if len(y_true) == 0:
        raise ValueError("y_true is empty: no predictions to evaluate")
    if y_true.min() < 0 or y_true.max() >= num_classes:
        raise ValueError(
            f"y_true holds label indices outside 0..{num_classes - 1}: "
            f"min {y_true.min()}, max {y_true.max()}"
        )
    if not np.all(np.isfinite(proba)) or proba.min() < 0 or proba.max() > 1:
        raise ValueError("proba must hold finite probabilities in [0, 1]")
    row_sums = proba.sum(axis=1)
    worst = int(np.argmax(np.abs(row_sums - 1)))
    if abs(row_sums[worst] - 1) > PROBA_SUM_TOLERANCE:
        raise ValueError(
            f"proba rows must sum to 1 (probabilities of the {num_classes} classes); "
            f"row {worst} sums to {row_sums[worst]:.6f}"
        )
    return y_true.astype(np.int64), proba


def _safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else 0.0


def _ranking_metrics(
    is_class: np.ndarray, score: np.ndarray, class_name: str, notes: list[str]
) -> tuple[float, float]:
    """One-vs-rest (roc_auc, pr_auc) of one class; NaN (with a note) when undefined."""
    positives = int(is_class.sum())
    if positives == 0 or positives == len(is_class):
        missing = "no" if positives == 0 else "only"
        notes.append(
            f"roc_auc and pr_auc of class {class_name!r} are undefined (null): y_true has "
            f"{missing} samples of that class"
        )
        return math.nan, math.nan
    return (
        float(roc_auc_score(is_class, score)),
        float(average_precision_score(is_class, score)),
    )


def _nanmean_with_note(values: list[float], name: str, notes: list[str]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    if not defined:
        return math.nan
    if len(defined) < len(values):
        notes.append(
            f"{name} macro average is over {len(defined)} of {len(values)} classes "
            "(the others are undefined)"
        )
    return float(np.mean(defined))


def youden_threshold(y_true: np.ndarray, positive_score: np.ndarray) -> float:
    """The score threshold with the largest Youden's J = sensitivity + specificity - 1.

    Args:
        y_true: (N,) 0/1 labels, both present. positive_score: (N,) P(class 1).
    Returns the lowest score that is called positive (sklearn's roc_curve thresholds);
    of equal J, the first on the curve (the highest threshold).
    """
    is_positive = np.asarray(y_true) == 1
    _require_both_outcomes(is_positive, "Youden's threshold")
    fpr, tpr, thresholds = roc_curve(is_positive, np.asarray(positive_score, dtype=np.float64))
    youden = tpr - fpr
    # Equal in exact arithmetic can differ in the last bit (2/3 vs 1 - 1/3): compare with a
    # tolerance so that ties go to the first point, as documented.
    best = int(np.flatnonzero(youden >= youden.max() - 1e-12)[0])
    return float(min(thresholds[best], 1.0))  # roc_curve's first threshold is +inf


def predicted_classes(proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """(N,) predicted class: the argmax, or for 2 classes P(class 1) >= `threshold` when given."""
    if threshold is None:
        return proba.argmax(axis=1)
    if proba.shape[1] != 2:
        raise ValueError(f"a decision threshold needs 2 classes, got {proba.shape[1]}")
    return (proba[:, 1] >= threshold).astype(np.int64)


def _per_class_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray,
    counts: np.ndarray,
    class_names: list[str],
    notes: list[str],
) -> dict[str, dict[str, float]]:
    """One-vs-rest support, precision, recall, specificity, F1, ROC AUC and PR AUC per class."""
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    total = counts.sum()
    per_class: dict[str, dict[str, float]] = {}
    for k, name in enumerate(class_names):
        true_pos = counts[k, k]
        false_pos = counts[:, k].sum() - true_pos
        false_neg = counts[k, :].sum() - true_pos
        true_neg = total - true_pos - false_pos - false_neg
        roc_auc, pr_auc = _ranking_metrics(y_true == k, proba[:, k], name, notes)
        per_class[name] = {
            "support": int(support[k]),
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "specificity": _safe_ratio(true_neg, true_neg + false_pos),
            "f1": float(f1[k]),
            "roc_auc": roc_auc,
            "pr_auc": pr_auc,
        }
    return per_class


def _multiclass_averages(
    y_true: np.ndarray,
    proba: np.ndarray,
    per_class: dict[str, dict[str, float]],
    class_names: list[str],
    notes: list[str],
) -> dict[str, float]:
    """Macro averages of the per-class values, and micro-averaged ROC and PR AUC."""
    averages = {
        key: float(np.mean([per_class[c][key] for c in class_names]))
        for key in ("precision", "recall", "specificity", "f1")
    }
    for key in ("roc_auc", "pr_auc"):
        averages[key] = _nanmean_with_note([per_class[c][key] for c in class_names], key, notes)
    one_hot = np.eye(len(class_names), dtype=np.int64)[y_true]
    averages["roc_auc_micro"] = float(roc_auc_score(one_hot.ravel(), proba.ravel()))
    averages["pr_auc_micro"] = float(average_precision_score(one_hot.ravel(), proba.ravel()))
    return averages


def classification_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    class_names: list[str],
    threshold: float | None = None,
) -> dict[str, Any]:
    """Every metric of one set of predictions.

    Args:
        y_true: (N,) int label indices into `class_names`.
        proba: (N, K) class probabilities, K = len(class_names).
        class_names: label index order (DatasetConfig.classes).
        threshold: two classes only: class 1 is predicted when its probability is at
            least this (default: the argmax, i.e. 0.5). Ranking metrics do not depend on it.

    Returns:
        {"n", "classes", "accuracy", "balanced_accuracy", "precision", "recall",
        "specificity", "f1", "roc_auc", "pr_auc", "log_loss", ["roc_auc_micro",
        "pr_auc_micro" (multiclass)], "per_class": {class: {"support", "precision",
        "recall", "specificity", "f1", "roc_auc", "pr_auc"}}, "confusion_matrix" (K x K
        counts, rows = actual, columns = predicted), "confusion_matrix_normalized"
        (rows sum to 1; a class absent from y_true gives a row of 0), "notes": [why a
        value is NaN]}. Undefined values are NaN.
    """
    y_true, proba = validate_predictions(y_true, proba, class_names)
    num_classes = len(class_names)
    labels = list(range(num_classes))
    y_pred = predicted_classes(proba, threshold)
    notes: list[str] = []

    counts = confusion_matrix(y_true, y_pred, labels=labels)
    row_totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(
        counts, row_totals, out=np.zeros(counts.shape, dtype=np.float64), where=row_totals > 0
    )

    per_class = _per_class_metrics(y_true, y_pred, proba, counts, class_names, notes)

    with warnings.catch_warnings():
        # It warns when a predicted class is absent from y_true; the result is still
        # the mean recall over the classes present, which is the definition we want.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced_accuracy = float(balanced_accuracy_score(y_true, y_pred))

    result: dict[str, Any] = {
        "n": len(y_true),
        "classes": list(class_names),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced_accuracy,
    }
    if num_classes == 2:
        result["threshold"] = 0.5 if threshold is None else float(threshold)
        positive = per_class[class_names[1]]
        for key in ("precision", "recall", "specificity", "f1", "roc_auc", "pr_auc"):
            result[key] = positive[key]
    else:
        result.update(_multiclass_averages(y_true, proba, per_class, class_names, notes))
    # Renormalised for log_loss only: it warns when float32 rows miss 1 by more than
    # 1e-8. The ranking metrics keep the raw scores, whose ties division would reorder.
    normalised = proba / proba.sum(axis=1, keepdims=True)
    result["log_loss"] = float(log_loss(y_true, normalised, labels=labels))
    result["per_class"] = per_class
    result["confusion_matrix"] = counts.tolist()
    result["confusion_matrix_normalized"] = normalized.tolist()
    result["notes"] = notes
    return result


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Flatten `classification_metrics` output to {name: float} (for MLflow and DVC).

    Top-level scalars except the image count "n" keep their names; per-class values
    become "<metric>_<class>", e.g. "roc_auc_glioma_tumor". Values may be NaN.
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        # "n" is the number of images, a property of the data rather than of the model.
        if key == "n" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        flat[key] = float(value)
    for class_name, values in metrics.get("per_class", {}).items():
        for key in PER_CLASS_SCALARS:
            flat[f"{key}_{class_name}"] = float(values[key])
    return flat


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The statistics of each scalar metric over seeds (medimg.evaluation.statistics).

    Args:
        per_seed: one `classification_metrics` (or `scalar_metrics`) dict per seed;
            all must have the same scalar metric names.

    Returns:
        {metric: {"mean", "std", "min", "max", "ci_low", "ci_high", "n_seeds"}}. A NaN
        in any seed makes that metric's statistics NaN (an undefined AUC comes from the
        data, so every seed has it); std and the interval are NaN for a single seed (no
        spread can be measured).
    """
    if not per_seed:
        raise ValueError("aggregate needs the metrics of at least one seed, got an empty list")
    flats = [scalar_metrics(m) for m in per_seed]
    names = list(flats[0])
    for index, flat in enumerate(flats[1:], start=1):
        if set(flat) != set(names):
            differing = sorted(set(flat) ^ set(names))
            raise ValueError(f"seed {index} has different metric names than seed 0: {differing}")
    return {name: _statistics([flat[name] for flat in flats]) for name in names}


def _statistics(values: list[float]) -> dict[str, float]:
    fields = ("mean", "std", "min", "max", "ci_low", "ci_high")
    if any(math.isnan(value) for value in values):
        return {**dict.fromkeys(fields, math.nan), "n_seeds": len(values)}
    summary = summarize(values)
    return {
        **{f: math.nan if getattr(summary, f) is None else getattr(summary, f) for f in fields},
        "n_seeds": summary.n,
    }


def _curve_classes(
    y_true: np.ndarray, proba: np.ndarray, class_names: list[str]
) -> list[tuple[str | None, np.ndarray, np.ndarray]]:
    """(class label or None for binary, is_positive (N,), score (N,)) per curve to draw.

    Binary: one curve, for the positive class. Multiclass: one per class whose curve
    is defined (present in y_true, not the only class) + "micro" over all K x N scores.
    """
    y_true, proba = validate_predictions(y_true, proba, class_names)
    if len(class_names) == 2:
        return [(None, y_true == 1, proba[:, 1])]
    curves: list[tuple[str | None, np.ndarray, np.ndarray]] = []
    for k, name in enumerate(class_names):
        is_class = y_true == k
        if 0 < is_class.sum() < len(is_class):
            curves.append((name, is_class, proba[:, k]))
    one_hot = np.eye(len(class_names), dtype=bool)[y_true]
    curves.append(("micro", one_hot.ravel(), proba.ravel()))
    return curves


def _require_both_outcomes(is_positive: np.ndarray, what: str) -> None:
    if is_positive.all() or not is_positive.any():
        raise ValueError(f"{what} is undefined: y_true holds a single class")


def _curve_frame(
    y_true: np.ndarray,
    proba: np.ndarray,
    class_names: list[str],
    what: str,
    points: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]],
) -> pd.DataFrame:
    """One curve per class of `_curve_classes`, `points(is_positive, score)` its columns."""
    frames = []
    for label, is_positive, score in _curve_classes(y_true, proba, class_names):
        _require_both_outcomes(is_positive, what)
        frame = pd.DataFrame(points(is_positive, score))
        if label is not None:
            frame["class"] = label
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _roc(is_positive: np.ndarray, score: np.ndarray) -> dict[str, np.ndarray]:
    fpr, tpr, _ = roc_curve(is_positive, score)
    return {"fpr": fpr, "tpr": tpr}


def _precision_recall(is_positive: np.ndarray, score: np.ndarray) -> dict[str, np.ndarray]:
    precision, recall, _ = precision_recall_curve(is_positive, score)
    return {"recall": recall, "precision": precision}


def roc_points(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """ROC curve points: columns fpr, tpr (binary) or fpr, tpr, class (multiclass).

    Multiclass adds one curve per class present in y_true and a "micro" curve.
    """
    return _curve_frame(y_true, proba, class_names, "the ROC curve", _roc)


def pr_points(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """Precision-recall curve points: columns recall, precision[, class], as `roc_points`."""
    return _curve_frame(y_true, proba, class_names, "the precision-recall curve", _precision_recall)
