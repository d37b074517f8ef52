"""Metric functions against cases computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medimg.evaluation.metrics import (
    aggregate,
    classification_metrics,
    pr_points,
    roc_points,
    scalar_metrics,
)

BINARY = ["NORMAL", "PNEUMONIA"]
THREE = ["a", "b", "c"]


def binary_proba(p_positive: list[float]) -> np.ndarray:
    p = np.array(p_positive)
    return np.stack([1 - p, p], axis=1)


def test_binary_metrics_match_hand_computation():
    # Predictions (p > 0.5): [0, 1, 0, 1, 1] -> TN 1, FP 1, FN 1, TP 2.
    y = np.array([0, 0, 1, 1, 1])
    proba = binary_proba([0.1, 0.6, 0.4, 0.8, 0.9])
    m = classification_metrics(y, proba, BINARY)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)  # TP / (TP + FP)
    assert m["recall"] == pytest.approx(2 / 3)  # TP / (TP + FN)
    assert m["specificity"] == pytest.approx(1 / 2)  # TN / (TN + FP)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # Positive scores 0.4, 0.8, 0.9 vs negative 0.1, 0.6: 5 of 6 pairs ranked right.
    assert m["roc_auc"] == pytest.approx(5 / 6)
    # Ranked 0.9 P, 0.8 P, 0.6 N, 0.4 P: AP = 1/3 * 1 + 1/3 * 1 + 1/3 * 3/4.
    assert m["pr_auc"] == pytest.approx(11 / 12)
    # Probability given to the true class: 0.9, 0.4, 0.4, 0.8, 0.9.
    expected_log_loss = -np.mean(np.log([0.9, 0.4, 0.4, 0.8, 0.9]))
    assert m["log_loss"] == pytest.approx(expected_log_loss)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert np.allclose(m["confusion_matrix_normalized"], [[1 / 2, 1 / 2], [1 / 3, 2 / 3]])
    # The negative class one-vs-rest: its recall is the positive class's specificity.
    assert m["per_class"]["NORMAL"]["recall"] == pytest.approx(1 / 2)
    assert m["per_class"]["NORMAL"]["precision"] == pytest.approx(1 / 2)
    assert m["notes"] == []
    assert "roc_auc_micro" not in m


@pytest.mark.parametrize(
    ("scores", "expected_auc"), [([0.1, 0.2, 0.8, 0.9], 1.0), ([0.9, 0.8, 0.2, 0.1], 0.0)]
)
def test_binary_auc_of_perfect_and_inverted_predictions(scores, expected_auc):
    y = np.array([0, 0, 1, 1])
    m = classification_metrics(y, binary_proba(scores), BINARY)
    assert m["roc_auc"] == pytest.approx(expected_auc)
    assert m["accuracy"] == pytest.approx(expected_auc)


def three_class_case() -> tuple[np.ndarray, np.ndarray]:
    # Predicted (argmax): [0, 0, 1, 0, 1, 1]; class "c" is never predicted.
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.5, 0.4, 0.1],
            [0.2, 0.7, 0.1],
            [0.6, 0.3, 0.1],
            [0.3, 0.4, 0.3],
            [0.1, 0.5, 0.4],
        ]
    )
    return y, proba


def test_multiclass_metrics_with_a_class_never_predicted():
    y, proba = three_class_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero_division must be handled, not warned about
        m = classification_metrics(y, proba, THREE)
    assert m["confusion_matrix"] == [[2, 0, 0], [1, 1, 0], [0, 2, 0]]
    assert m["accuracy"] == pytest.approx(3 / 6)
    a, b, c = (m["per_class"][k] for k in THREE)
    # a: TP 2, FP 1, FN 0, TN 3.  b: TP 1, FP 2, FN 1, TN 2.  c: TP 0, FP 0, FN 2, TN 4.
    assert (a["precision"], a["recall"], a["specificity"]) == pytest.approx((2 / 3, 1, 3 / 4))
    assert (b["precision"], b["recall"], b["specificity"]) == pytest.approx((1 / 3, 1 / 2, 1 / 2))
    assert (c["precision"], c["recall"], c["specificity"]) == (0.0, 0.0, 1.0)
    assert (a["f1"], b["f1"], c["f1"]) == pytest.approx((0.8, 0.4, 0.0))
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(0.4)
    assert m["balanced_accuracy"] == pytest.approx(1 / 2)
    # Pairs ranked right, positives vs negatives: a 7/8, b 5/8, c 8/8.
    assert (a["roc_auc"], b["roc_auc"], c["roc_auc"]) == pytest.approx((7 / 8, 5 / 8, 1.0))
    assert m["roc_auc"] == pytest.approx((7 / 8 + 5 / 8 + 1) / 3)
    # Micro average: scikit-learn's own multilabel path on the one-hot targets.
    one_hot = np.eye(3)[y]
    assert m["roc_auc_micro"] == pytest.approx(roc_auc_score(one_hot, proba, average="micro"))
    assert m["pr_auc_micro"] == pytest.approx(
        average_precision_score(one_hot, proba, average="micro")
    )
    assert m["n"] == 6


def test_class_absent_from_y_true_gives_null_auc_and_a_note():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, proba, THREE)
    assert math.isnan(m["per_class"]["c"]["roc_auc"])
    assert math.isnan(m["per_class"]["c"]["pr_auc"])
    assert m["roc_auc"] == pytest.approx(1.0)  # a and b are ranked perfectly
    assert any("'c'" in note and "undefined" in note for note in m["notes"])
    assert any("macro average is over 2 of 3" in note for note in m["notes"])
    assert m["per_class"]["c"]["support"] == 0


@pytest.mark.parametrize(
    ("y", "proba", "message"),
    [
        (np.array([0, 1]), np.array([[0.5, 0.5]]), "shape"),
        (np.array([0, 2]), np.array([[0.5, 0.5], [0.5, 0.5]]), "outside"),
        (np.array([0.0, 1.0]), np.array([[0.5, 0.5], [0.5, 0.5]]), "integer"),
        (np.array([0, 1]), np.array([[0.5, 0.2], [0.5, 0.5]]), "sum to 1"),
        (np.array([0, 1]), np.array([[1.5, -0.5], [0.5, 0.5]]), r"\[0, 1\]"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(y, proba, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y, proba, BINARY)


def test_scalar_metrics_flattens_per_class_values():
    y, proba = three_class_case()
    flat = scalar_metrics(classification_metrics(y, proba, THREE))
    assert flat["roc_auc_b"] == pytest.approx(5 / 8)
    assert flat["recall_a"] == pytest.approx(1.0)
    assert "confusion_matrix" not in flat
    assert "n" not in flat  # an image count, not a metric to average over seeds
    assert all(isinstance(v, float) for v in flat.values())


def test_aggregate_mean_sample_std_min_max():
    y = np.array([0, 0, 1, 1])
    # accuracy 1/2 and 1 -> mean 3/4, sample std sqrt(2 * (1/4)^2 / 1).
    seed_a = classification_metrics(y, binary_proba([0.6, 0.2, 0.3, 0.9]), BINARY)
    seed_b = classification_metrics(y, binary_proba([0.1, 0.2, 0.8, 0.9]), BINARY)
    summary = aggregate([seed_a, seed_b])
    assert summary["accuracy"]["mean"] == pytest.approx(0.75)
    assert summary["accuracy"]["std"] == pytest.approx(math.sqrt(2 * 0.25**2))
    assert summary["accuracy"]["min"] == pytest.approx(0.5)
    assert summary["accuracy"]["max"] == pytest.approx(1.0)
    assert summary["accuracy"]["n_seeds"] == 2


def test_aggregate_single_seed_has_undefined_std_and_mismatch_is_an_error():
    y, proba = three_class_case()
    multi = classification_metrics(y, proba, THREE)
    single = aggregate([multi])
    assert single["accuracy"]["mean"] == pytest.approx(0.5)
    assert math.isnan(single["accuracy"]["std"])
    binary = classification_metrics(np.array([0, 1]), binary_proba([0.2, 0.7]), BINARY)
    with pytest.raises(ValueError, match="different metric names"):
        aggregate([multi, binary])
    with pytest.raises(ValueError, match="at least one seed"):
        aggregate([])


def test_roc_and_pr_points_binary():
    y = np.array([0, 0, 1, 1])
    roc = roc_points(y, binary_proba([0.1, 0.2, 0.8, 0.9]), BINARY)
    assert list(roc.columns) == ["fpr", "tpr"]
    # A perfect ranking passes through the top-left corner.
    assert ((roc["fpr"] == 0) & (roc["tpr"] == 1)).any()
    pr = pr_points(y, binary_proba([0.1, 0.2, 0.8, 0.9]), BINARY)
    assert list(pr.columns) == ["recall", "precision"]
    assert ((pr["recall"] == 1) & (pr["precision"] == 1)).any()


def test_roc_points_multiclass_skips_a_class_absent_from_y_true():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3]])
    roc = roc_points(y, proba, THREE)
    assert list(roc.columns) == ["fpr", "tpr", "class"]
    assert list(roc["class"].unique()) == ["a", "b", "micro"]
    pr = pr_points(y, proba, THREE)
    assert list(pr["class"].unique()) == ["a", "b", "micro"]
