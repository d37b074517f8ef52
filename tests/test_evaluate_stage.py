"""The evaluate stage end to end on a tiny real setup, and predict_image on a new image file.

Real components throughout: prepared arrays in the augment stage's format, Keras
models fitted for one epoch and saved as .keras with their predictions (as the
train stage leaves them), MLflow parent/child runs in a sqlite store, PNG files
on disk. The expected metrics come from the saved models themselves, so they
also check that evaluate judges the predictions of the model that was kept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image
from scipy import stats

from medimg.config.params import Params, load_params, parse_params
from medimg.data.prepared import load_prepared
from medimg.evaluation.evaluate_stage import (
    HEADLINE_METRICS,
    EvaluateError,
    headline_metrics,
    run_evaluate,
)
from medimg.evaluation.parent_metrics import PARENT_METRICS
from medimg.evaluation.predictions import (
    PREDICTIONS_FILE,
    data_fingerprint,
    predict_splits,
    save_predictions,
)
from medimg.evaluation.test_predictions import (
    N_TEST_IMAGES_METRIC,
    TEST_PREDICTIONS_FILE,
    read_test_predictions,
)
from medimg.inference.predict import PredictError, predict_image
from medimg.reporting.thesis import load_thesis_results
from medimg.tracking import store

IMAGE_SIZE = 8
RUN = "tiny_run"
DATASET = "tiny"
PROTOCOL = "official"
SEEDS = (0, 1)
BEST_SEED = 1
PNGS = (
    "confusion_test.png",
    "roc_test.png",
    "pr_test.png",
    "training_curves.png",
    "predictions_test.png",
)


def make_params(classes: list[str]) -> Params:
    return parse_params(
        {
            "profile": "sample",
            "datasets": {
                DATASET: {
                    "layout": "chest_xray" if len(classes) == 2 else "mri",
                    "classes": classes,
                    "channels": 1,
                    "fetch": {"source": "unused.zip"},
                    "split": {"protocols": [PROTOCOL]},
                    "prepare": {"image_size": IMAGE_SIZE},
                }
            },
            "runs": {
                RUN: {
                    "dataset": DATASET,
                    "split_protocol": PROTOCOL,
                    "model": "xray_cnn",
                    "epochs": 1,
                    "batch_size": 4,
                    "repeats": len(SEEDS),
                    "prediction_examples": 6,
                }
            },
        }
    )


def images_of(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 8, 8, 1) uint8: brightness rises with the class, plus noise (learnable, not trivial)."""
    base = 40 + 60 * labels[:, None, None, None]
    noise = rng.normal(0, 30, size=(len(labels), IMAGE_SIZE, IMAGE_SIZE, 1))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_prepared(root: Path, classes: list[str], test_labels: np.ndarray) -> dict:
    rng = np.random.default_rng(0)
    k = len(classes)
    directory = root / "data" / "prepared" / DATASET / PROTOCOL
    directory.mkdir(parents=True)
    labels = {"train": np.arange(24) % k, "val": np.arange(12) % k, "test": test_labels}
    for split, y in labels.items():
        np.save(directory / f"{split}_x.npy", images_of(y, rng))
        np.save(directory / f"{split}_y.npy", y.astype(np.int64))
        pd.DataFrame(
            {
                "path": [f"images/{split}/{i}.png" for i in range(len(y))],
                "label": [classes[i] for i in y],  # class names, as the augment stage writes
                "copy": 0,
            }
        ).to_csv(directory / f"{split}.csv", index=False)
    meta = {
        "dataset": DATASET,
        "classes": classes,
        "channels": 1,
        "image_size": IMAGE_SIZE,
        "aspect": "stretch",
        "counts": {
            s: {c: int((y == i).sum()) for i, c in enumerate(classes)} for s, y in labels.items()
        },
        "n_train_original": 24,
        "offline_augment": {"copies": 0},
    }
    (directory / "meta.json").write_text(json.dumps(meta))
    return {split: (np.load(directory / f"{split}_x.npy"), y) for split, y in labels.items()}


def fit_tiny_model(seed: int, k: int, x: np.ndarray, y: np.ndarray) -> tuple[keras.Model, dict]:
    """Rescale + Dense: the registry's contract (uint8 in; sigmoid for 2 classes, else softmax)."""
    keras.utils.set_random_seed(seed)
    binary = k == 2
    model = keras.Sequential(
        [
            keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(1 if binary else k, activation="sigmoid" if binary else "softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(x, y.astype("float32" if binary else "int32"), epochs=1, verbose=0)
    return model, history.history


@dataclass
class Setup:
    root: Path
    classes: list[str]
    params: Params
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    uri: str
    parent_id: str
    child_ids: dict[int, str]


def build_setup(root: Path, classes: list[str], test_labels: np.ndarray) -> Setup:
    arrays = write_prepared(root, classes, test_labels)
    prepared = load_prepared(root / "data" / "prepared" / DATASET / PROTOCOL)
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = store.get_or_create_experiment(client, f"medimg-{DATASET}")
    parent = client.create_run(experiment_id, run_name=RUN)
    models = root / "models" / RUN
    seeds = []
    child_ids = {}
    for seed in SEEDS:
        child = client.create_run(
            experiment_id,
            run_name=f"{RUN}/seed-{seed}",
            tags={"mlflow.parentRunId": parent.info.run_id},
        )
        client.set_terminated(child.info.run_id)
        child_ids[seed] = child.info.run_id
        model, history = fit_tiny_model(seed, len(classes), *arrays["train"])
        seed_dir = models / f"seed-{seed}"
        seed_dir.mkdir(parents=True)
        model.save(seed_dir / "model.keras")
        frame = pd.DataFrame(history)
        frame.insert(0, "epoch", range(1, len(frame) + 1))
        frame.to_csv(seed_dir / "history.csv", index=False)
        preprocessing = {
            "classes": classes,
            "image_size": IMAGE_SIZE,
            "channels": 1,
            "aspect": "stretch",
            "input": "uint8 0-255 pixels, shape (batch, H, W, C); the model rescales",
        }
        (seed_dir / "preprocessing.json").write_text(json.dumps(preprocessing))
        # What the train stage saves: the kept model's probabilities on val and test.
        save_predictions(
            seed_dir / PREDICTIONS_FILE, predict_splits(model, prepared), data_fingerprint(prepared)
        )
        seeds.append(
            {
                "seed": seed,
                "child_run_id": child.info.run_id,
                "model": f"seed-{seed}/model.keras",
                "predictions": f"seed-{seed}/{PREDICTIONS_FILE}",
            }
        )
    client.set_terminated(parent.info.run_id)
    summary = {
        "run": RUN,
        "dataset": DATASET,
        "model": "xray_cnn",
        "experiment_id": experiment_id,
        "experiment_name": f"medimg-{DATASET}",
        "parent_run_id": parent.info.run_id,
        "tracking_uri": uri,
        "seeds": seeds,
        "best_seed": BEST_SEED,
        "registered": None,
    }
    (models / "summary.json").write_text(json.dumps(summary))
    return Setup(root, classes, make_params(classes), arrays, uri, parent.info.run_id, child_ids)


REPO = Path(__file__).resolve().parents[1]
BINARY = ["NORMAL", "PNEUMONIA"]
MULTICLASS = ["glioma_tumor", "no_tumor", "pituitary_tumor"]


@pytest.fixture(scope="module")
def binary_setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """Built once: fitting models and creating the MLflow store take most of the time."""
    return build_setup(tmp_path_factory.mktemp("binary"), BINARY, np.arange(10) % 2)


@pytest.fixture
def use_root(monkeypatch: pytest.MonkeyPatch):
    """Point paths and the tracking URI at a setup's root for one test."""

    def use(root: Path) -> Path:
        monkeypatch.setenv("MEDIMG_ROOT", str(root))
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return root

    return use


def accuracy_by_hand(model_path: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Accuracy from the raw model output, independent of predict_proba and scikit-learn."""
    output = keras.saving.load_model(model_path).predict(x, verbose=0)
    predicted = (output[:, 0] > 0.5).astype(int) if output.shape[1] == 1 else output.argmax(axis=1)
    return float((predicted == y).mean()), predicted


@pytest.mark.slow
def test_run_evaluate_binary(binary_setup: Setup, use_root):
    use_root(binary_setup.root)
    check_evaluation(binary_setup, run_evaluate(binary_setup.params.run_settings(RUN)))
    # A second evaluation replaces the reports without leaving old or partial folders.
    check_evaluation(binary_setup, run_evaluate(binary_setup.params.run_settings(RUN)))
    assert sorted(p.name for p in (binary_setup.root / "reports" / "runs").iterdir()) == [RUN]


@pytest.mark.slow
def test_run_evaluate_multiclass_with_a_class_absent_from_test(tmp_path: Path, use_root):
    # The last class is absent from the test set: its test AUC is undefined (null).
    setup = build_setup(use_root(tmp_path), MULTICLASS, np.arange(10) % 2)
    report = check_evaluation(setup, run_evaluate(setup.params.run_settings(RUN)))
    absent = MULTICLASS[2]
    assert report["test"][f"roc_auc_{absent}"]["mean"] is None
    assert report["per_seed"]["seed-0"]["test"][f"roc_auc_{absent}"] is None
    assert report["val"][f"roc_auc_{absent}"]["mean"] is not None
    child = MlflowClient(setup.uri).get_run(setup.child_ids[0]).data.metrics
    assert f"test_roc_auc_{absent}" not in child
    assert f"val_roc_auc_{absent}" in child
    reports = tmp_path / "reports" / "runs" / RUN
    assert set(pd.read_csv(reports / "roc_test.csv")["class"]) == {*MULTICLASS[:2], "micro"}
    details = json.loads((reports / "seeds" / "seed-0" / "metrics.json").read_text())
    assert any(absent in note for note in details["test"]["notes"])


def check_evaluation(setup: Setup, report: dict) -> dict:
    """Checks common to every task; returns details.json as read from disk."""
    at_root, classes = setup.root, setup.classes
    reports = at_root / "reports" / "runs" / RUN
    assert not (at_root / "reports" / "runs" / f"{RUN}.tmp").exists()
    on_disk = json.loads((reports / "details.json").read_text())
    assert on_disk == report
    assert on_disk["best_seed"] == BEST_SEED
    x_test, y_test = setup.arrays["test"]

    per_seed = []
    prepared_paths = pd.read_csv(at_root / "data" / "prepared" / DATASET / PROTOCOL / "test.csv")
    for seed in SEEDS:
        expected, predicted = accuracy_by_hand(
            at_root / "models" / RUN / f"seed-{seed}" / "model.keras", x_test, y_test
        )
        assert on_disk["per_seed"][f"seed-{seed}"]["test"]["accuracy"] == pytest.approx(expected)
        per_seed.append(expected)
        # The report's paired statistics read this file: each test image named, in order.
        images = read_test_predictions(
            reports / "seeds" / f"seed-{seed}" / TEST_PREDICTIONS_FILE, classes
        )
        assert list(images.paths) == list(prepared_paths["path"])
        assert images.labels.tolist() == y_test.tolist()
        assert images.predicted.tolist() == predicted.tolist()
    test_accuracy = on_disk["test"]["accuracy"]
    assert test_accuracy["mean"] == pytest.approx(np.mean(per_seed))
    assert test_accuracy["std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert test_accuracy["min"] == pytest.approx(min(per_seed))
    assert set(on_disk["val"]) >= {"accuracy", "balanced_accuracy", "roc_auc", "pr_auc", "log_loss"}
    check_headline(json.loads((reports / "metrics.json").read_text()), on_disk, per_seed)

    # DVC plot data: one confusion row per test image, from the best seed.
    confusion = pd.read_csv(reports / "confusion_test.csv")
    assert list(confusion.columns) == ["actual", "predicted"]
    assert list(confusion["actual"]) == [classes[i] for i in y_test]
    _, best_predicted = accuracy_by_hand(
        at_root / "models" / RUN / f"seed-{BEST_SEED}" / "model.keras", x_test, y_test
    )
    assert list(confusion["predicted"]) == [classes[i] for i in best_predicted]
    roc = pd.read_csv(reports / "roc_test.csv")
    pr = pd.read_csv(reports / "pr_test.csv")
    assert list(roc.columns[:2]) == ["fpr", "tpr"]
    assert list(pr.columns[:2]) == ["recall", "precision"]
    assert roc[["fpr", "tpr"]].stack().between(0, 1).all()
    for name in PNGS:
        with Image.open(reports / name) as image:
            assert image.format == "PNG" and image.size[0] > 100

    client = MlflowClient(setup.uri)
    for seed, run_id in setup.child_ids.items():
        logged = client.get_run(run_id).data.metrics
        assert logged["test_accuracy"] == pytest.approx(per_seed[SEEDS.index(seed)])
        assert "val_log_loss" in logged
        assert logged[N_TEST_IMAGES_METRIC] == len(y_test)
        artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
        assert {
            "evaluation/metrics.json",
            "evaluation/confusion_test.png",
            f"evaluation/{TEST_PREDICTIONS_FILE}",
        } <= artifacts
    parent = client.get_run(setup.parent_id).data.metrics
    # to four decimals, as metrics.json
    assert parent["test_accuracy_mean"] == pytest.approx(np.mean(per_seed), abs=5e-5)
    # Student's t over the repeats (scipy's interval is NaN when the spread is 0)
    half_width = stats.t.ppf(0.975, len(per_seed) - 1) * stats.sem(per_seed)
    low, high = np.mean(per_seed) - half_width, np.mean(per_seed) + half_width
    assert parent["test_accuracy_ci_low"] == pytest.approx(low, abs=5e-5)
    assert parent["test_accuracy_ci_high"] == pytest.approx(high, abs=5e-5)
    assert test_accuracy["ci_low"] == pytest.approx(low)  # details.json has it too
    # The headline a user compares, not every statistic of every metric (those are in
    # details.json): at most three values of each of PARENT_METRICS.
    assert set(parent) <= {
        f"{split}_{metric}_{statistic}"
        for split, metric in PARENT_METRICS
        for statistic in ("mean", "ci_low", "ci_high")
    }
    assert len(parent) <= 3 * len(PARENT_METRICS) <= 24
    parent_artifacts = {a.path for a in client.list_artifacts(setup.parent_id, "evaluation")}
    assert {
        f"evaluation/{name}" for name in (*PNGS, "metrics.json", "roc_test.csv")
    } <= parent_artifacts
    assert "evaluation/details.json" in parent_artifacts
    # Evaluation logs into the training's runs; it creates none of its own.
    experiment = client.get_experiment_by_name(f"medimg-{DATASET}")
    assert len(client.search_runs([experiment.experiment_id])) == 1 + len(SEEDS)
    # The experiment's saved view (the UI's "Views" menu) shows parent metrics.
    envelope = json.loads(experiment.tags["mlflow.sharedViewState.medimg-headline"])
    assert envelope["name"] == "Headline (medimg)" and envelope["createdAt"] > 0
    view = json.loads(envelope["state"])
    columns = [c.removeprefix("metrics.`").removesuffix("`") for c in view["selectedColumns"]]
    assert "test_accuracy_mean" in columns and set(columns) <= set(parent)

    return on_disk


def check_headline(headline: dict, details: dict, test_accuracies: list[float]) -> None:
    """metrics.json: the few numbers DVC shows, each from details.json, to 4 decimals."""
    assert set(headline) == {*HEADLINE_METRICS, "seeds"}
    assert headline["seeds"] == len(SEEDS)
    assert headline["acc"] == pytest.approx(np.mean(test_accuracies), abs=5e-5)
    assert headline["acc_std"] == pytest.approx(np.std(test_accuracies, ddof=1), abs=5e-5)
    for key, (split, metric) in {
        "auc": ("test", "roc_auc"),
        "sens": ("test", "recall"),
        "spec": ("test", "specificity"),
        "val_acc": ("val", "accuracy"),
        "val_auc": ("val", "roc_auc"),
    }.items():
        assert headline[key] == round(details[split][metric]["mean"], 4), key


def test_headline_of_one_seed_has_no_std() -> None:
    statistic = {"mean": 0.123456, "std": float("nan"), "min": 0.1, "max": 0.2}
    details = {
        split: {metric: statistic for _, metric, _ in HEADLINE_METRICS.values()}
        for split in ("val", "test")
    }
    headline = headline_metrics({**details, "n_seeds": 1})
    assert headline["acc"] == 0.1235 and headline["val_auc"] == 0.1235
    assert headline["acc_std"] is None and headline["seeds"] == 1
    json.dumps(headline, allow_nan=False)  # valid JSON for DVC: no NaN


def test_dvc_metrics_show_fits_120_columns(tmp_path: Path) -> None:
    """`dvc metrics show` prints a row per run and a column per key: it must stay a table.

    Run names: params.yaml's and those the thesis comparison names (the longest planned).
    """
    thesis = load_thesis_results()
    names = set(load_params(REPO / "params.yaml").runs)
    for dataset in thesis.datasets:
        names.update(thesis.compared_runs(dataset))
    stage = {
        "cmd": "true",
        "metrics": [{f"reports/runs/{n}/metrics.json": {"cache": False}} for n in sorted(names)],
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": stage}}))
    statistic = {"mean": 0.987654, "std": 0.012345, "min": 0.9, "max": 1.0}
    details = {
        split: {metric: statistic for _, metric, _ in HEADLINE_METRICS.values()}
        for split in ("val", "test")
    }
    for name in names:
        (tmp_path / "reports" / "runs" / name).mkdir(parents=True)
        headline = headline_metrics({**details, "n_seeds": 5})
        (tmp_path / "reports" / "runs" / name / "metrics.json").write_text(json.dumps(headline))
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    shown = subprocess.run(
        [*dvc, "metrics", "show"],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = shown.rstrip("\n").splitlines()
    assert len(lines) == 1 + len(names)  # a header, then one row per run
    assert lines[0].split() == ["Path", *sorted([*HEADLINE_METRICS, "seeds"])]
    too_wide = [line for line in lines if len(line.rstrip()) > 120]
    assert not too_wide, f"{len(too_wide[0].rstrip())} columns: {too_wide[0]}"


def test_missing_summary_names_the_train_stage(tmp_path: Path, use_root):
    use_root(tmp_path)
    with pytest.raises(EvaluateError, match=f"dvc repro train@{RUN}"):
        run_evaluate(make_params(["NORMAL", "PNEUMONIA"]).run_settings(RUN))


def copy_of(setup: Setup, root: Path) -> Path:
    """A private copy of a setup's files, for a test that damages them."""
    for name in ("data", "models", "mlruns"):
        shutil.copytree(setup.root / name, root / name)
    return root


def test_predictions_of_other_data_are_refused(binary_setup: Setup, tmp_path: Path, use_root):
    root = use_root(copy_of(binary_setup, tmp_path))
    # The augment stage ran again after training: the test images are not those predicted.
    test_x = root / "data" / "prepared" / DATASET / PROTOCOL / "test_x.npy"
    images = np.load(test_x)
    np.save(test_x, 255 - images)
    with pytest.raises(EvaluateError, match=f"other val/test arrays.*dvc repro train@{RUN}"):
        run_evaluate(binary_setup.params.run_settings(RUN))
    assert not (root / "reports" / "runs" / RUN).exists()


@pytest.mark.parametrize("damage", ["missing", "not an archive", "lacks arrays"])
def test_missing_or_damaged_predictions_name_the_file(
    binary_setup: Setup, tmp_path: Path, use_root, damage: str
):
    root = use_root(copy_of(binary_setup, tmp_path))
    path = root / "models" / RUN / "seed-0" / PREDICTIONS_FILE
    if damage == "missing":
        path.unlink()
    elif damage == "not an archive":
        path.write_text("not numpy")
    else:
        np.savez(path, proba_val=np.zeros((2, 2)))
    with pytest.raises(EvaluateError, match=rf"seed-0/{PREDICTIONS_FILE}.*train@{RUN}"):
        run_evaluate(binary_setup.params.run_settings(RUN))
    assert not (root / "reports" / "runs" / RUN).exists()


def test_a_summary_without_predictions_asks_for_a_new_training(
    binary_setup: Setup, tmp_path: Path, use_root
):
    root = use_root(copy_of(binary_setup, tmp_path))
    summary_path = root / "models" / RUN / "summary.json"
    summary = json.loads(summary_path.read_text())
    del summary["seeds"][1]["predictions"]  # written by a train stage before predictions.npz
    summary_path.write_text(json.dumps(summary))
    with pytest.raises(EvaluateError, match=rf"lacks \['predictions'\].*train@{RUN}"):
        run_evaluate(binary_setup.params.run_settings(RUN))


@pytest.mark.slow
def test_evaluate_imports_no_deep_learning_framework(binary_setup: Setup):
    """The point of saving predictions at training time: evaluate's start-up stays light."""
    code = (
        "import sys; import medimg.evaluation.evaluate_stage; "
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"


@pytest.mark.slow
def test_predict_image_processes_a_new_file_like_training_data(binary_setup: Setup, tmp_path):
    seed_dir = binary_setup.root / "models" / RUN / "seed-0"
    # A larger RGB file: predict_image must convert it to 8 x 8 greyscale as training did.
    bright = tmp_path / "bright.png"
    Image.new("RGB", (40, 30), (250, 250, 250)).save(bright)
    ranked = predict_image(seed_dir, bright)
    assert [name for name, _ in ranked] in (BINARY, BINARY[::-1])
    assert ranked[0][1] >= ranked[1][1]
    assert sum(p for _, p in ranked) == pytest.approx(1.0, abs=1e-5)
    # Same answer as the model on a uniform 250-grey 8 x 8 array (what load_image makes of it).
    output = keras.saving.load_model(seed_dir / "model.keras").predict(
        np.full((1, IMAGE_SIZE, IMAGE_SIZE, 1), 250, np.uint8), verbose=0
    )
    assert dict(ranked)["PNEUMONIA"] == pytest.approx(float(output[0, 0]), abs=1e-5)
    assert predict_image(seed_dir / "model.keras", bright) == ranked

    alone = tmp_path / "alone"  # a model without its preprocessing.json
    alone.mkdir()
    shutil.copy2(seed_dir / "model.keras", alone / "model.keras")
    with pytest.raises(PredictError, match=r"preprocessing\.json"):
        predict_image(alone, bright)
    with pytest.raises(PredictError, match=r"missing\.png"):
        predict_image(seed_dir, tmp_path / "missing.png")
