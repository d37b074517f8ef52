"""What an MLflow parent run holds: the headline's mean and 95 % interval, nothing more."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medimg.evaluation.parent_metrics import PARENT_METRICS, parent_metrics


def child(rng: np.random.Generator) -> dict[str, float]:
    """A child run's metrics as the evaluate stage logs them: the headline and much more."""
    metrics = {f"{split}_{metric}": float(rng.uniform(0.5, 1)) for split, metric in PARENT_METRICS}
    for split in ("val", "test"):
        metrics |= {f"{split}_{m}": float(rng.uniform()) for m in ("f1", "log_loss", "pr_auc")}
        metrics |= {f"{split}_recall_{c}": float(rng.uniform()) for c in ("a", "b", "c", "d")}
    return metrics | {"n_test_images": 624.0, "best_val_auc": 0.9}


def test_mean_and_student_t_interval_of_each_headline_metric() -> None:
    rng = np.random.default_rng(0)
    children = [child(rng) for _ in range(5)]
    logged = parent_metrics(children)
    assert len(logged) == 3 * len(PARENT_METRICS)  # 21: not every metric of the children
    for split, metric in PARENT_METRICS:
        values = [c[f"{split}_{metric}"] for c in children]
        half_width = stats.t.ppf(0.975, 4) * stats.sem(values)
        key = f"{split}_{metric}"
        mean = np.mean(values)
        assert logged[f"{key}_mean"] == pytest.approx(mean, abs=5e-5)
        assert logged[f"{key}_ci_low"] == pytest.approx(mean - half_width, abs=5e-5)
        assert logged[f"{key}_ci_high"] == pytest.approx(mean + half_width, abs=5e-5)
    # to four decimals: what the UI's columns show (0.6667, not 0.66666666...)
    assert all(value == round(value, 4) for value in logged.values())
    # a metric's three values sit together in MLflow's alphabetical lists
    names = sorted(logged)
    for split, metric in PARENT_METRICS:
        at = names.index(f"{split}_{metric}_ci_high")
        assert names[at : at + 3] == [
            f"{split}_{metric}_{s}" for s in ("ci_high", "ci_low", "mean")
        ]


def test_one_repeat_gives_the_means_only() -> None:
    logged = parent_metrics([child(np.random.default_rng(1))])
    assert sorted(logged) == sorted(f"{s}_{m}_mean" for s, m in PARENT_METRICS)


def test_a_metric_undefined_or_missing_in_one_repeat_is_left_out() -> None:
    rng = np.random.default_rng(2)
    children = [child(rng) for _ in range(3)]
    children[1]["test_roc_auc"] = math.nan  # a test set of one class
    del children[2]["val_accuracy"]
    logged = parent_metrics(children)
    assert not any(key.startswith(("test_roc_auc", "val_accuracy")) for key in logged)
    assert "test_accuracy_mean" in logged and "val_roc_auc_ci_low" in logged
