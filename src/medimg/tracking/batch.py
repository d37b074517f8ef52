"""Logging many values to one MLflow run: requests within MLflow's limits, each step once.

MLflow's LogBatch takes at most 1,000 metrics, 100 params, 100 tags and 1,000 items in
all per request (REST API reference, LogBatch). MlflowClient.log_batch of MLflow 3.17
cuts bigger batches itself, but that is the client's internal behaviour, not its
contract (older clients sent one request and the server refused it): every medimg
caller (the epoch callback, the train and evaluate stages, the tuner, the GPU results
importer) logs through `log_batch` here, which cuts its requests to the documented
limits in one place.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

MAX_METRICS = 1000
MAX_PARAMS = 100
MAX_TAGS = 100
MAX_ITEMS = 1000


def requests(
    metrics: Sequence[Metric] = (), params: Sequence[Param] = (), tags: Sequence[RunTag] = ()
) -> list[tuple[list[Metric], list[Param], list[RunTag]]]:
    """The (metrics, params, tags) of each LogBatch request, each within MLflow's limits.

    Params and tags fill the first requests (100 each); metrics fill what room is left
    (1,000 items in all, at most 1,000 metrics), then requests of their own.
    """
    metrics, params, tags = list(metrics), list(params), list(tags)
    out = []
    while metrics or params or tags:
        some_params, params = params[:MAX_PARAMS], params[MAX_PARAMS:]
        some_tags, tags = tags[:MAX_TAGS], tags[MAX_TAGS:]
        room = min(MAX_METRICS, MAX_ITEMS - len(some_params) - len(some_tags))
        some_metrics, metrics = metrics[:room], metrics[room:]
        out.append((some_metrics, some_params, some_tags))
    return out


def log_batch(
    client: MlflowClient,
    run_id: str,
    metrics: Iterable[Metric] = (),
    params: Iterable[Param] = (),
    tags: Iterable[RunTag] = (),
) -> None:
    """Log everything to run `run_id` in as few requests as MLflow's limits allow.

    Metrics whose value is NaN or infinite are left out: an undefined value stays out
    of MLflow (the JSON files write it as null).
    """
    finite = [metric for metric in metrics if math.isfinite(metric.value)]
    for some_metrics, some_params, some_tags in requests(finite, list(params), list(tags)):
        client.log_batch(run_id, metrics=some_metrics, params=some_params, tags=some_tags)


def metrics_at(values: Mapping[str, float], step: int = 0) -> list[Metric]:
    """{name: value} as Metrics of one step, stamped now."""
    timestamp = int(time.time() * 1000)
    return [Metric(key, float(value), timestamp, step) for key, value in values.items()]


def params_of(values: Mapping[str, str]) -> list[Param]:
    """{name: value} (flattened: medimg.tracking.runs.flatten_params) as Params."""
    return [Param(key, value) for key, value in values.items()]


def logged_steps(
    client: MlflowClient, run_id: str, keys: Iterable[str] | None = None
) -> set[tuple[str, int]]:
    """The (metric, step) pairs run `run_id` already holds, of the metrics named `keys`
    (None: of every metric)."""
    present = set(client.get_run(run_id).data.metrics)
    present = present if keys is None else present & set(keys)
    return {
        (key, point.step)
        for key in sorted(present)
        for point in client.get_metric_history(run_id, key)
    }


def not_logged(client: MlflowClient, run_id: str, metrics: Iterable[Metric]) -> list[Metric]:
    """`metrics` less those whose (key, step) run `run_id` already holds.

    A stage that was killed after logging and runs again then logs each step once
    (MLflow keeps every point it is sent: a second one at the same step makes the
    chart zig-zag).
    """
    metrics = list(metrics)
    logged = logged_steps(client, run_id, {metric.key for metric in metrics})
    return [metric for metric in metrics if (metric.key, metric.step) not in logged]
