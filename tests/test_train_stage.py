"""The train stage end to end on tiny prepared arrays, against a real sqlite MLflow store."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from medimg import paths
from medimg.config.params import Params, parse_params
from medimg.data.prepared import load_prepared
from medimg.evaluation.predictions import PREDICTIONS_FILE, data_fingerprint, read_predictions
from medimg.tracking import model_registry, store
from medimg.training.train_stage import run_train
from tiny_data import tiny_datasets, write_tiny_prepared

CLASSES = ["NORMAL", "PNEUMONIA"]
SIZE = 32
EPOCHS = 2


def _params() -> Params:
    run = {
        "dataset": "chest_xray",
        "split_protocol": "official",
        "model": "xray_cnn",
        "model_options": {"feature_maps": 4, "dense_units": [8]},
        "epochs": EPOCHS,
        "batch_size": 8,
        "repeats": 2,
        "seed": 0,
    }
    raw = {
        "profile": "sample",
        "datasets": tiny_datasets(SIZE),
        # tiny_lr trains one seed only: it is there to compete for the champion alias
        "runs": {"tiny": run, "tiny_lr": {**run, "learning_rate": 0.01, "repeats": 1}},
    }
    return parse_params(raw)


def _write_prepared(root: Path) -> None:
    write_tiny_prepared(root)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the project's default store
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """Two configurations trained once into one store; shared by the tests below."""
    root = tmp_path_factory.mktemp("root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDIMG_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        _write_prepared(root)
        params = _params()
        first = run_train(params.run_settings("tiny"))
        second = run_train(params.run_settings("tiny_lr"))
    return root, first, second


@pytest.mark.slow
def test_summary_and_model_folder_follow_the_contract(trained: tuple[Path, dict, dict]) -> None:
    root, summary, _ = trained
    folder = root / "models" / "tiny"
    assert json.loads((folder / "summary.json").read_text()) == summary
    assert [s["seed"] for s in summary["seeds"]] == [0, 1]
    assert summary["tracking_uri"] == f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    for seed in summary["seeds"]:
        seed_dir = folder / f"seed-{seed['seed']}"
        assert (folder / seed["model"]).is_file()
        history = pd.read_csv(seed_dir / "history.csv")
        assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))
        assert {"loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc"} <= set(history)
        best_row = history[history["epoch"] == seed["best_epoch"]].iloc[0]
        assert seed["best_val_auc"] == pytest.approx(best_row["val_auc"])
        assert json.loads((seed_dir / "preprocessing.json").read_text()) == {
            "classes": CLASSES,
            "image_size": SIZE,
            "channels": 1,
            "aspect": "stretch",
            "normalize": "none",
            "crop": "none",
            "input": "uint8 0-255 pixels, shape (batch, H, W, C); the model rescales",
        }
        check_predictions_of_the_kept_model(root, folder, seed)
    best = max(summary["seeds"], key=lambda s: s["best_val_auc"])
    assert summary["best_seed"] == best["seed"]
    # the training state is removed once the outputs are in place
    assert not (root / ".medimg-work" / "tiny").exists()
    assert not (root / "models" / "tiny.tmp").exists()


def check_predictions_of_the_kept_model(root: Path, folder: Path, seed: dict) -> None:
    """predictions.npz holds the saved model's own output on val and test, for these arrays."""
    data = load_prepared(root / "data" / "prepared" / "chest_xray" / "official")
    predictions, fingerprint = read_predictions(folder / seed["predictions"])
    assert fingerprint == data_fingerprint(data)
    model = keras.saving.load_model(folder / seed["model"], compile=False)
    for split in ("val", "test"):
        arrays = data.split(split)
        positive = model.predict(np.asarray(arrays.x), verbose=0)[:, 0]  # sigmoid: P(PNEUMONIA)
        np.testing.assert_array_equal(predictions.y[split], arrays.y)
        np.testing.assert_allclose(predictions.proba[split][:, 1], positive, atol=1e-6)
        np.testing.assert_allclose(predictions.proba[split].sum(axis=1), 1.0, atol=1e-6)


def test_parent_and_child_runs_hold_params_metrics_and_artifacts(
    trained: tuple[Path, dict, dict],
) -> None:
    root, summary, _ = trained
    client = MlflowClient(summary["tracking_uri"])
    experiment = client.get_experiment(summary["experiment_id"])
    assert experiment.name == "medimg-chest_xray"
    assert experiment.artifact_location.startswith((root / "mlruns" / "artifacts").as_uri())

    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["medimg.role"] == "parent"
    assert parent.data.tags["medimg.run"] == "tiny"
    assert parent.data.params["run.epochs"] == str(EPOCHS)
    assert parent.data.params["prepare.image_size"] == str(SIZE)
    assert parent.data.params["run.split_protocol"] == "official"

    children = client.search_runs(
        [summary["experiment_id"]], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.info.run_id for c in children) == sorted(
        s["child_run_id"] for s in summary["seeds"]
    )
    for child in children:
        seed = child.data.tags["medimg.seed"]
        assert child.info.run_name == f"tiny/seed-{seed}"
        assert child.data.tags["medimg.role"] == "child"
        assert child.data.params["seed"] == seed
        assert child.data.params["model_options.feature_maps"] == "4"
        assert child.data.params["learning_rate"] == "0.001"
        for key in ("epoch_loss", "epoch_val_auc", "epoch_val_accuracy"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert steps == list(range(1, EPOCHS + 1))
        for key in ("best_val_auc", "best_epoch", "train_seconds", "images_per_second"):
            assert key in child.data.metrics
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "history.csv" in artifacts
        logged = client.search_logged_models(
            [summary["experiment_id"]], filter_string=f"source_run_id = '{child.info.run_id}'"
        )
        assert [m.name for m in logged] == ["model"]

    for metric in ("best_val_auc", "best_val_accuracy", "best_val_loss", "best_train_accuracy"):
        values = [c.data.metrics[metric] for c in children]
        assert parent.data.metrics[f"{metric}_mean"] == pytest.approx(np.mean(values))
    # the means only: each seed's values are on its child (evaluation.parent_metrics adds
    # the test and validation headline when the evaluate stage runs)
    assert sorted(parent.data.metrics) == sorted(
        f"best_{m}_mean" for m in ("val_auc", "val_accuracy", "val_loss", "train_accuracy")
    )


def test_champion_is_the_best_validation_auc_across_configurations(
    trained: tuple[Path, dict, dict],
) -> None:
    _, first, second = trained
    client = MlflowClient(first["tracking_uri"])
    name = "medimg-chest_xray"
    assert first["registered"]["name"] == second["registered"]["name"] == name
    assert [first["registered"]["version"], second["registered"]["version"]] == [1, 2]
    best_auc = {
        summary["registered"]["version"]: max(s["best_val_auc"] for s in summary["seeds"])
        for summary in (first, second)
    }
    champion = client.get_model_version_by_alias(name, "champion")
    assert best_auc[int(champion.version)] == max(best_auc.values())
    for summary in (first, second):
        version = client.get_model_version_by_alias(name, f"{summary['run']}-best")
        assert int(version.version) == summary["registered"]["version"]
        best_child = next(s for s in summary["seeds"] if s["seed"] == summary["best_seed"])
        assert version.run_id == best_child["child_run_id"]
        assert float(version.tags[model_registry.VAL_AUC_TAG]) == pytest.approx(
            best_child["best_val_auc"]
        )


def test_unreachable_tracking_server_fails_before_any_output(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_prepared(root)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(store.TrackingError, match=uri):
        run_train(_params().run_settings("tiny"))
    assert not (root / "models").exists()
    assert not paths.work_dir("tiny").exists()


def test_missing_prepared_data_names_the_augment_stage(root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dvc repro augment@chest_xray"):
        run_train(_params().run_settings("tiny"))
    assert not (root / "models").exists()
    assert not (root / "mlruns").exists()


@pytest.mark.slow
def test_interrupted_stage_resumes_finished_seeds_and_the_same_runs(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medimg.training import train_stage

    _write_prepared(root)
    real_fit = train_stage.fit_one_seed
    fitted: list[int] = []

    def fit_that_is_killed_at_seed_1(run, data, work, seed, callbacks=()):
        if seed == 1 and -1 not in fitted:
            fitted.append(-1)  # the first attempt at seed 1 dies, as a killed process would
            raise KeyboardInterrupt
        fitted.append(seed)
        return real_fit(run, data, work, seed, callbacks)

    monkeypatch.setattr(train_stage, "fit_one_seed", fit_that_is_killed_at_seed_1)
    with pytest.raises(KeyboardInterrupt):
        run_train(_params().run_settings("tiny"))
    work = root / ".medimg-work" / "tiny"
    assert not (root / "models" / "tiny").exists()
    parent_id = (work / "parent.mlflow_run_id").read_text()
    child_1_id = (work / "seed-1.mlflow_run_id").read_text()

    # A state saved by a medimg that did not yet save predictions: they are made on resume.
    (work / f"seed-0.{PREDICTIONS_FILE}").unlink()
    summary = run_train(_params().run_settings("tiny"))
    assert fitted == [0, -1, 1]  # seed 0 was not trained again
    check_predictions_of_the_kept_model(root, root / "models" / "tiny", summary["seeds"][0])
    assert summary["parent_run_id"] == parent_id
    assert summary["seeds"][1]["child_run_id"] == child_1_id
    client = MlflowClient(summary["tracking_uri"])
    assert len(client.search_runs([summary["experiment_id"]])) == 3  # a parent and two children
    assert not work.exists()
