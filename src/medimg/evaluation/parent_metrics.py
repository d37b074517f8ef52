"""What a configuration's MLflow parent run holds: the few numbers a user compares.

A parent run groups the repeat trainings (its children) of one configuration. In the
MLflow UI its metrics are what the runs table and Compare show side by side, so it
holds only the headline: for each metric of PARENT_METRICS the mean over the repeats
and its 95 % confidence interval (medimg.evaluation.statistics: Student's t), named
`<split>_<metric>_{mean,ci_low,ci_high}` so that a metric's three values sort
together (e.g. test_accuracy_ci_high, test_accuracy_ci_low, test_accuracy_mean).
Everything else stays where it is not in the way: each repeat's values on its child
run (`test_accuracy`, per-class values, ...), and every metric's mean, std, min, max
and interval, per-seed values and the ensemble's in the parent's
evaluation/details.json artifact (the evaluate stage's details.json).

Used alike by the evaluate stage and the import of the GPU machine's results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from mlflow import MlflowClient

from medimg.evaluation.statistics import summarize
from medimg.tracking import store

# (split, metric) as the child runs name them (`<split>_<metric>`). For more than two
# classes recall, specificity and roc_auc are the macro averages (metrics.py), so the
# same names serve both datasets: sensitivity, specificity and macro ROC AUC.
PARENT_METRICS = (
    ("test", "accuracy"),
    ("test", "balanced_accuracy"),
    ("test", "roc_auc"),
    ("test", "recall"),
    ("test", "specificity"),
    ("val", "accuracy"),
    ("val", "roc_auc"),
)
# The interval needs two repeats or more; with one only the mean is logged.
PARENT_STATISTICS = ("mean", "ci_low", "ci_high")
# As metrics.json rounds them: the UI's columns show 0.6667, not 0.66666666…; each
# repeat's full value is on its child run and in details.json.
PARENT_DECIMALS = 4
# The experiment's saved view (tracking.store.save_shared_view) that shows these
# metrics' means as columns of the runs table: MLflow's default columns (source, models,
# dataset) are each browser's choice, so the headline is a view in the "Views" menu.
HEADLINE_VIEW = "medimg-headline"
HEADLINE_VIEW_NAME = "Headline (medimg)"


def parent_metrics(children: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The parent run's metrics from its children's ({"test_accuracy": 0.81, ...}, one
    mapping per repeat).

    A metric that a child lacks or holds as NaN (undefined, e.g. the AUC of a test set
    with one class) is left out, as MLflow never holds NaN here: a mean over the other
    repeats would silently compare unlike things.
    """
    result: dict[str, float] = {}
    for split, metric in PARENT_METRICS:
        key = f"{split}_{metric}"
        values = [child.get(key, math.nan) for child in children]
        if not values or any(math.isnan(value) for value in values):
            continue
        summary = summarize(values)
        for statistic in PARENT_STATISTICS:
            value = getattr(summary, statistic)
            if value is not None:
                result[f"{key}_{statistic}"] = round(value, PARENT_DECIMALS)
    return result


def headline_view() -> dict[str, list[str]]:
    """The runs table's state of HEADLINE_VIEW: the mean of each PARENT_METRICS as a column
    (the UI's column keys: metrics.`<name>`)."""
    return {"selectedColumns": [f"metrics.`{s}_{m}_mean`" for s, m in PARENT_METRICS]}


def save_headline_view(client: MlflowClient, experiment_id: str) -> None:
    """Save HEADLINE_VIEW in the experiment (once; again only when it changed)."""
    store.save_shared_view(
        client, experiment_id, HEADLINE_VIEW, HEADLINE_VIEW_NAME, headline_view()
    )
