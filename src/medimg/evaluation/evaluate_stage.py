"""The evaluate stage: every seed of a trained configuration on val and test: reports/runs/<run>/.

Reads models/<run>/ (summary.json, seed-<k>/predictions.npz, history.csv,
preprocessing.json) and data/prepared/<dataset>/. The probabilities were
predicted by the train stage with the model it kept, and carry a fingerprint of
the val/test arrays, so evaluate loads no model and imports no Keras, and
refuses predictions made on other data. Writes reports/runs/<run>/:

    metrics.json          DVC metrics, the headline numbers only (HEADLINE_METRICS: short
                          keys so that `dvc metrics show` stays a table at 120 columns):
                          test acc, acc_std, auc, sens, spec (means over seeds; macro
                          for multiclass), val_acc, val_auc and seeds; 4 decimals
    details.json          everything: {"val"|"test": {metric: {mean, std, min, max,
                          ci_low, ci_high}} (ci: the 95 % t interval over seeds),
                          "per_seed": {"seed-<k>": {"val"|"test": {metric: value}}},
                          "best_seed", "n_seeds", "std_ddof"}; scalars only, NaN -> null
    confusion_test.csv    actual,predicted class names, one row per test image (best seed)
    roc_test.csv          fpr,tpr[,class] (best seed, test)
    pr_test.csv           recall,precision[,class] (best seed, test)
    *.png                 confusion_test, roc_test, pr_test, predictions_test (best seed),
                          training_curves (all seeds)
    seeds/seed-<k>/       per seed: metrics.json (everything, with confusion matrices and
                          the notes on undefined values), test_predictions.csv (each test
                          image's path, class and probabilities: the report's paired
                          statistics read it) and the four test PNGs

The best seed is the train stage's (summary.json "best_seed", chosen on validation
data only), so the test set never picks the model it reports.

MLflow: each child run (one per seed, made by the train stage) gets val_<metric>,
test_<metric> and n_test_images metrics and its seeds/seed-<k>/ files under evaluation/;
the parent run gets the headline only (medimg.evaluation.parent_metrics: a few metrics'
mean and 95 % interval) and the top-level files, details.json holding everything else.
No run is created here.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from medimg import atomic, paths
from medimg.config.runs import RunConfig, RunSettings
from medimg.data.prepared import PreparedData, load_prepared
from medimg.errors import UserError
from medimg.evaluation import figures
from medimg.evaluation.metrics import (
    aggregate,
    pr_points,
    roc_points,
    scalar_metrics,
)
from medimg.evaluation.parent_metrics import parent_metrics, save_headline_view
from medimg.evaluation.predictions import (
    EVALUATED_SPLITS,
    SplitPredictions,
    data_fingerprint,
    read_predictions,
)
from medimg.evaluation.seed_evaluation import (
    ensemble,
    evaluate_predictions,
    save_test_predictions,
)
from medimg.evaluation.statistics import STD_DDOF
from medimg.evaluation.test_predictions import (
    N_TEST_IMAGES_METRIC,
    TEST_PREDICTIONS_FILE,
    prepared_test_paths,
)
from medimg.tracking import batch, store

SUMMARY_FILE = "summary.json"
# What each summary.json "seeds" entry must give: the seed's predictions, not its
# model, are what evaluate reads (the train stage predicted with the model it kept).
REQUIRED_SEED_KEYS = ("seed", "child_run_id", "predictions")
ARTIFACT_DIR = "evaluation"
STATISTICS = ("mean", "std", "min", "max", "ci_low", "ci_high")
# metrics.json key -> (split, metric, statistic) of details.json. DVC prints one column
# per key, each as wide as its name, beside a 40-character path: with longer names or
# more keys a row no longer fits 120 columns. Test split unless the key says "val_".
# Balanced accuracy is left out: it is (sens + spec) / 2 for two classes and equals
# the macro sens for more.
HEADLINE_METRICS = {
    "acc": ("test", "accuracy", "mean"),
    "acc_std": ("test", "accuracy", "std"),
    "auc": ("test", "roc_auc", "mean"),
    "sens": ("test", "recall", "mean"),
    "spec": ("test", "specificity", "mean"),
    "val_acc": ("val", "accuracy", "mean"),
    "val_auc": ("val", "roc_auc", "mean"),
}
# Enough to compare with figures quoted to 0.01 % (93.75 %); details.json keeps all digits.
HEADLINE_DECIMALS = 4
TEST_FIGURES = ("confusion_test.png", "roc_test.png", "pr_test.png", "predictions_test.png")


class EvaluateError(UserError, RuntimeError):
    """The evaluate stage cannot run: missing or inconsistent training outputs."""


def _read_json(path: Path, produced_by: str) -> dict[str, Any]:
    if not path.is_file():
        raise EvaluateError(f"{path}: not found; run the train stage first: {produced_by}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EvaluateError(f"{path}: not valid JSON: {err}") from None


def _read_summary(run_name: str) -> dict[str, Any]:
    path = paths.models_dir(run_name) / SUMMARY_FILE
    summary = _read_json(path, f"dvc repro train@{run_name}")
    missing = [key for key in ("seeds", "best_seed", "parent_run_id") if key not in summary]
    if missing:
        raise EvaluateError(f"{path}: missing keys {missing}")
    if not summary["seeds"]:
        raise EvaluateError(f"{path}: 'seeds' is empty; nothing to evaluate")
    for entry in summary["seeds"]:
        absent = [key for key in REQUIRED_SEED_KEYS if key not in entry]
        if absent:
            raise EvaluateError(
                f"{path}: a 'seeds' entry lacks {absent}: {entry}; "
                f"re-run the train stage: dvc repro train@{run_name}"
            )
    seeds = [entry["seed"] for entry in summary["seeds"]]
    if summary["best_seed"] not in seeds:
        raise EvaluateError(f"{path}: best_seed {summary['best_seed']} is not one of {seeds}")
    return summary


def _check_preprocessing(run_name: str, seed: int, data: PreparedData) -> None:
    """The model was trained on data of these classes and channels, in this order."""
    path = paths.models_dir(run_name) / f"seed-{seed}" / "preprocessing.json"
    preprocessing = _read_json(path, f"dvc repro train@{run_name}")
    for key, expected in (("classes", data.classes), ("channels", data.channels)):
        if preprocessing.get(key) != expected:
            raise EvaluateError(
                f"{path}: {key} = {preprocessing.get(key)!r} but {data.directory} has "
                f"{expected!r}; the model was trained on other data: dvc repro train@{run_name}"
            )


def _check_runs_exist(client: MlflowClient, summary: dict[str, Any], uri: str) -> None:
    """Fail before any work when a run of summary.json is not in the tracking store."""
    run_ids = [summary["parent_run_id"]] + [entry["child_run_id"] for entry in summary["seeds"]]
    for run_id in run_ids:
        try:
            client.get_run(run_id)
        except MlflowException as err:
            raise EvaluateError(
                f"MLflow run {run_id} of summary.json is not in the tracking store {uri} "
                f"(summary.json was written with {summary.get('tracking_uri')!r}): {err.message}"
            ) from None


def _json_ready(obj: Any) -> Any:
    """NaN -> None (JSON null) throughout, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {key: _json_ready(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(value) for value in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _write_json(path: Path, obj: Any) -> None:
    # allow_nan=False: a NaN that escaped _json_ready would be invalid JSON for DVC.
    path.write_text(json.dumps(_json_ready(obj), indent=2, allow_nan=False) + "\n")


def headline_metrics(details: dict[str, Any]) -> dict[str, float | int | None]:
    """metrics.json's content from details.json's: HEADLINE_METRICS rounded, and "seeds".

    A value that is undefined (NaN or None, e.g. the std of one seed) is None (JSON null).
    """
    headline: dict[str, float | int | None] = {}
    for key, (split, metric, statistic) in HEADLINE_METRICS.items():
        value = details[split][metric][statistic]
        defined = value is not None and not math.isnan(value)
        headline[key] = round(float(value), HEADLINE_DECIMALS) if defined else None
    headline["seeds"] = details["n_seeds"]
    return headline


def _example_rows(n_test: int, run: RunConfig) -> np.ndarray:
    """Test rows shown in the prediction grid: the same for every seed, so grids compare."""
    count = min(run.prediction_examples, n_test)
    rng = np.random.default_rng(run.seed)
    return np.sort(rng.choice(n_test, size=count, replace=False))


def _evaluate_seed(
    run_name: str,
    run: RunConfig,
    entry: dict[str, Any],
    data: PreparedData,
    fingerprint: str,
    test_paths: list[str],
    out_dir: Path,
) -> dict[str, Any]:
    """Judge one seed's val and test predictions; write its metrics.json, per-image test
    predictions (test_paths: each test row's image) and figures.

    Returns {"metrics": {split: classification_metrics}, "predictions": SplitPredictions}.
    """
    seed = entry["seed"]
    predictions = _read_seed_predictions(run_name, entry, data, fingerprint)
    metrics = evaluate_predictions(predictions, data.classes, run.decision_threshold)
    out_dir.mkdir(parents=True)
    _write_json(out_dir / "metrics.json", {"seed": seed, **metrics})
    save_test_predictions(
        out_dir / TEST_PREDICTIONS_FILE,
        predictions,
        data.classes,
        run.decision_threshold,
        test_paths,
    )
    _write_test_figures(
        out_dir,
        metrics["test"],
        predictions.y["test"],
        predictions.proba["test"],
        data,
        run,
        f"seed {seed}",
    )
    return {"metrics": metrics, "predictions": predictions}


def _read_seed_predictions(
    run_name: str, entry: dict[str, Any], data: PreparedData, fingerprint: str
) -> SplitPredictions:
    """The probabilities the train stage saved for this seed, checked to belong to `data`
    (whose data_fingerprint is `fingerprint`)."""
    path = paths.models_dir(run_name) / entry["predictions"]
    retrain = f"dvc repro train@{run_name}"
    if not path.is_file():
        raise EvaluateError(f"{path}: not found; run the train stage first: {retrain}")
    try:
        predictions, saved_on = read_predictions(path)
    except ValueError as err:
        raise EvaluateError(f"{err}; re-run the train stage: {retrain}") from None
    if saved_on != fingerprint:
        raise EvaluateError(
            f"{path}: made on other val/test arrays than {data.directory} holds now (the "
            f"augment stage ran again after training); re-run the train stage: {retrain}"
        )
    return predictions


def _write_test_figures(
    out_dir: Path,
    test_metrics: dict[str, Any],
    y_test: np.ndarray,
    proba: np.ndarray,
    data: PreparedData,
    run: RunConfig,
    label: str,
) -> None:
    classes = data.classes
    figures.save_confusion_matrix(
        np.array(test_metrics["confusion_matrix"]),
        classes,
        out_dir / "confusion_test.png",
        title=f"test, {label}",
    )
    figures.save_roc_curves(
        roc_points(y_test, proba, classes),
        test_metrics,
        out_dir / "roc_test.png",
        title=f"ROC, test, {label}",
    )
    figures.save_pr_curves(
        pr_points(y_test, proba, classes),
        test_metrics,
        out_dir / "pr_test.png",
        title=f"Precision-recall, test, {label}",
    )
    rows = _example_rows(len(y_test), run)
    if len(rows):
        figures.save_prediction_grid(
            np.asarray(data.split("test").x[rows]),
            y_test[rows],
            proba[rows],
            classes,
            out_dir / "predictions_test.png",
        )


def _read_history(run_name: str, seed: int) -> pd.DataFrame:
    path = paths.models_dir(run_name) / f"seed-{seed}" / "history.csv"
    if not path.is_file():
        raise EvaluateError(
            f"{path}: not found; run the train stage first: dvc repro train@{run_name}"
        )
    return pd.read_csv(path)


def _write_plot_data(
    out_dir: Path, y_test: np.ndarray, proba: np.ndarray, classes: list[str]
) -> None:
    """The DVC plot files of the best seed's test predictions."""
    predicted = proba.argmax(axis=1)
    pd.DataFrame(
        {"actual": [classes[i] for i in y_test], "predicted": [classes[i] for i in predicted]}
    ).to_csv(out_dir / "confusion_test.csv", index=False)
    for points, name in ((roc_points, "roc_test.csv"), (pr_points, "pr_test.csv")):
        frame = points(y_test, proba, classes)
        if "class" not in frame:
            # One curve, of the positive class: the column lets one DVC template
            # (.dvc/plots/curve_by_class.json) draw binary and multiclass curves.
            frame["class"] = classes[1]
        frame.to_csv(out_dir / name, index=False)


def _log_metrics(client: MlflowClient, run_id: str, values: dict[str, float]) -> None:
    """Log finite values; NaN (undefined) stays out of MLflow and is null in the JSON files."""
    batch.log_batch(client, run_id, metrics=batch.metrics_at(values))


def run_evaluate(settings: RunSettings) -> dict[str, Any]:
    """Evaluate every seed of run `settings.name`; write reports/<run>/; log to MLflow.

    Returns the content of details.json (NaN as None); metrics.json holds its headline.
    """
    run_name, run, dataset = settings.name, settings.run, settings.dataset
    summary = _read_summary(run_name)
    data = load_prepared(paths.prepared_dir(run.dataset, run.split_protocol))
    if data.classes != dataset.classes:
        raise EvaluateError(
            f"{data.directory / 'meta.json'}: classes {data.classes} differ from "
            f"params.yaml datasets.{run.dataset}.classes {dataset.classes}; "
            f"re-run the augment stage: dvc repro augment@{run.dataset}"
        )
    for entry in summary["seeds"]:
        _check_preprocessing(run_name, entry["seed"], data)
    uri = store.tracking_uri()
    store.ensure_reachable(uri)
    client = MlflowClient(uri)
    _check_runs_exist(client, summary, uri)

    with atomic.building(paths.reports_dir(run_name)) as staging:
        report = _evaluate_into(staging, client, settings, summary, data)
    return report


def _details(
    per_seed: dict[int, dict[str, Any]], ensemble_metrics: dict[str, Any], best_seed: int
) -> dict[str, Any]:
    """details.json: statistics over seeds, per-seed values and the ensemble's."""
    statistics = {
        split: aggregate([result["metrics"][split] for result in per_seed.values()])
        for split in EVALUATED_SPLITS
    }
    return {
        **{
            split: {
                name: {stat: values[stat] for stat in STATISTICS}
                for name, values in statistics[split].items()
            }
            for split in EVALUATED_SPLITS
        },
        "per_seed": {
            f"seed-{seed}": {
                split: scalar_metrics(result["metrics"][split]) for split in EVALUATED_SPLITS
            }
            for seed, result in per_seed.items()
        },
        # the mean probabilities of all seeds' models, judged like one model
        "ensemble": {split: scalar_metrics(ensemble_metrics[split]) for split in EVALUATED_SPLITS},
        "best_seed": best_seed,
        "n_seeds": len(per_seed),
        "std_ddof": STD_DDOF,
    }


def _seed_dir(reports: Path, seed: int) -> Path:
    """One seed's files: under seeds/, so that everything the stage writes is a DVC output
    (seeds/ is one; the report stage depends on the whole reports/runs/ folder)."""
    return reports / "seeds" / f"seed-{seed}"


def _evaluate_into(
    staging: Path,
    client: MlflowClient,
    settings: RunSettings,
    summary: dict[str, Any],
    data: PreparedData,
) -> dict[str, Any]:
    """Evaluate every seed into `staging` and log to MLflow; return details.json's content."""
    run_name, run = settings.name, settings.run
    per_seed: dict[int, dict[str, Any]] = {}
    fingerprint = data_fingerprint(data)  # once: every seed was predicted on the same arrays
    try:
        test_paths = prepared_test_paths(data.directory, data.split("test").y, data.classes)
    except ValueError as err:
        raise EvaluateError(
            f"{err}; re-run the augment stage: dvc repro augment@{run.dataset}"
        ) from None
    for entry in summary["seeds"]:
        seed = entry["seed"]
        per_seed[seed] = _evaluate_seed(
            run_name, run, entry, data, fingerprint, test_paths, _seed_dir(staging, seed)
        )
    combined = ensemble([result["predictions"] for result in per_seed.values()])
    ensemble_metrics = evaluate_predictions(combined, data.classes, run.decision_threshold)

    best_seed = summary["best_seed"]
    best = per_seed[best_seed]["predictions"]
    _write_plot_data(staging, best.y["test"], best.proba["test"], data.classes)
    # The best seed's figures were drawn with its evaluation; they are copied, not redrawn.
    for name in TEST_FIGURES:
        if (_seed_dir(staging, best_seed) / name).is_file():
            shutil.copy2(_seed_dir(staging, best_seed) / name, staging / name)
    histories = {seed: _read_history(run_name, seed) for seed in per_seed}
    figures.save_training_curves(histories, staging / "training_curves.png")

    report = _details(per_seed, ensemble_metrics, best_seed)
    _write_json(staging / "details.json", report)
    _write_json(staging / "metrics.json", headline_metrics(report))
    # MLflow last: a failure above leaves both the store and reports/ untouched.
    _log_evaluation(client, summary, per_seed, staging)
    return _json_ready(report)


def _log_evaluation(
    client: MlflowClient,
    summary: dict[str, Any],
    per_seed: dict[int, dict[str, Any]],
    staging: Path,
) -> None:
    """Children: val_/test_<metric> and their files; parent: the headline and the files."""
    children = []
    for entry in summary["seeds"]:
        seed, run_id = entry["seed"], entry["child_run_id"]
        metrics = per_seed[seed]["metrics"]
        child = {
            f"{split}_{name}": value
            for split in EVALUATED_SPLITS
            for name, value in scalar_metrics(metrics[split]).items()
        }
        children.append(child)
        # the report states each side's test-set size beside a comparison
        _log_metrics(client, run_id, {**child, N_TEST_IMAGES_METRIC: metrics["test"]["n"]})
        client.log_artifacts(run_id, str(_seed_dir(staging, seed)), ARTIFACT_DIR)
    _log_metrics(client, summary["parent_run_id"], parent_metrics(children))
    experiment_id = client.get_run(summary["parent_run_id"]).info.experiment_id
    save_headline_view(client, experiment_id)
    for path in sorted(staging.iterdir()):
        if path.is_file():
            client.log_artifact(summary["parent_run_id"], str(path), ARTIFACT_DIR)
