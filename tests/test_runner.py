"""The GPU runner at toy size on this CPU, with the JAX backend, and importing its results.

The runner runs in a subprocess where MLflow, DVC, TensorFlow, requests and imagehash
cannot be imported, as on the GPU machine; the import runs here against a real sqlite
MLflow store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from scipy import stats

from medimg.config.params import load_params
from medimg.evaluation.test_predictions import (
    N_TEST_IMAGES_METRIC,
    TEST_PREDICTIONS_FILE,
    read_test_predictions,
)
from medimg.runner.bundle import BundleError, make_bundle
from medimg.runner.importer import import_results
from medimg.runner.results import ResultsError, RunnerManifest, SeedRecord, read_record

pytestmark = pytest.mark.slow  # each test trains, or runs a server

REPO = Path(__file__).resolve().parents[1]
ABSENT_THERE = ("mlflow", "dvc", "tensorflow", "requests", "imagehash")
RUNNER = (
    "import importlib.abc, sys\n"
    "class Absent(importlib.abc.MetaPathFinder):  # as on the GPU machine\n"
    "    def find_spec(self, name, path, target=None):\n"
    f"        if name.split('.')[0] in {ABSENT_THERE!r}:\n"
    "            raise ImportError(f'{name} is not installed on the GPU machine')\n"
    "sys.meta_path.insert(0, Absent())\n"
    "from medimg.runner.run import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _tiny_params(root: Path) -> Path:
    """The repository's params.yaml with one tiny X-ray run (the sample data, 32 px)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    xray = raw["datasets"]["chest_xray"]
    xray["fetch"]["source"] = str(REPO / "data" / "sample" / "chest_xray")
    xray["prepare"]["image_size"] = 32
    raw["runs"] = {
        "tiny": {
            "dataset": "chest_xray",
            "split_protocol": "official",
            "model": "xray_cnn",
            "model_options": {"feature_maps": 4, "dense_units": [8]},
            "epochs": 2,
            "batch_size": 16,
            "repeats": 2,
            "seed": 0,
        }
    }
    raw.pop("tune", None)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Fetch and split the sample here, bundle it, zip the sample as the carried archive."""
    from medimg.data.fetch import fetch_dataset
    from medimg.data.split import split_dataset

    root = tmp_path_factory.mktemp("here")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDIMG_ROOT", str(root))
        params_file = _tiny_params(root)
        params = load_params(params_file)
        fetch_dataset("chest_xray", params.datasets["chest_xray"], workers=1)
        split_dataset("chest_xray", params.datasets["chest_xray"])
        info = make_bundle(params_file, params, ["tiny"], root / "bundle")
    archive = root / "chest_xray.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        sample = REPO / "data" / "sample" / "chest_xray"
        for path in sorted(sample.rglob("*.jpeg")):
            zf.write(path, path.relative_to(sample).as_posix())
    return {"root": root, "info": info, "archive": archive, "params": params}


def _run_there(bundle: dict, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    env.pop("MEDIMG_ROOT", None)
    args = [
        "--bundle",
        str(bundle["root"] / "bundle"),
        "--archive",
        f"chest_xray={bundle['archive']}",
        "--runs",
        "tiny",
        "--out",
        str(out),
        *extra,
    ]
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def chunks(bundle: dict, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two device calls: seed 0, then seed 1."""
    out = tmp_path_factory.mktemp("there")
    _run_there(bundle, out / "call-1", "--seeds", "0")
    _run_there(bundle, out / "call-2", "--seeds", "1")
    return [out / "call-1", out / "call-2"]


def test_bundle_holds_params_and_the_splits_of_the_runs(bundle: dict) -> None:
    folder = bundle["root"] / "bundle"
    assert yaml.safe_load((folder / "params.yaml").read_text())["profile"] == "sample"
    for split in ("train", "val", "test"):
        assert (folder / "splits" / "chest_xray" / "official" / f"{split}.csv").is_file()
    assert bundle["info"].runs == ["tiny"] and len(bundle["info"].bundle_id) == 64


def test_bundle_refuses_unknown_runs(bundle: dict, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="unknown run"):
        make_bundle(bundle["root"] / "params.yaml", bundle["params"], ["nope"], tmp_path / "b")


def test_runner_writes_whole_seed_folders_with_jax(chunks: list[Path]) -> None:
    manifest = read_record(chunks[0] / "manifest.json", RunnerManifest)
    assert manifest.backend == "jax" and manifest.done == {"tiny": [0]}
    assert manifest.finished is not None and manifest.precision == "float32"
    seed_dir = chunks[0] / "tiny" / "seed-0"
    record = read_record(seed_dir / "result.json", SeedRecord)
    assert record.epochs_run == 2 and record.images_per_second > 0
    assert 0 <= record.test["accuracy"] <= 1
    predictions = np.load(seed_dir / "predictions.npz")
    assert predictions["test_proba"].shape == (len(predictions["test_y"]), 2)
    metrics = json.loads((seed_dir / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == pytest.approx(record.test["accuracy"])
    for name in ("history.csv", "confusion_test.png", "roc_test.png", "training_curves.png"):
        assert (seed_dir / name).stat().st_size > 0
    images = read_test_predictions(seed_dir / TEST_PREDICTIONS_FILE, ["NORMAL", "PNEUMONIA"])
    assert images.labels.tolist() == predictions["test_y"].tolist()
    assert np.allclose(images.proba, predictions["test_proba"], rtol=1e-6)
    assert all(path.startswith("images/test/") for path in images.paths)


def test_a_seed_past_the_time_budget_is_left_for_the_next_call(bundle, tmp_path) -> None:
    _run_there(bundle, tmp_path / "out", "--seeds", "0", "1", "--budget-s", "0")
    manifest = read_record(tmp_path / "out" / "manifest.json", RunnerManifest)
    assert manifest.done == {} and manifest.left == {"tiny": [0, 1]}
    assert not (tmp_path / "out" / "tiny" / "seed-0").exists()


def test_import_joins_chunks_under_one_parent_and_is_idempotent(
    chunks: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    first = import_results(chunks[0])
    second = import_results(chunks[1])
    again = import_results(chunks[1])
    assert first == second == again  # one parent for the run on this device
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(first["tiny"])
    assert parent.data.tags["medimg.imported"] == "true"
    assert parent.data.tags["medimg.keras_backend"] == "jax"
    assert parent.data.params["run.epochs"] == "2"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["medimg.seed"] for c in children) == ["0", "1"]
    accuracies = [c.data.metrics["test_accuracy"] for c in children]
    assert parent.data.metrics["test_accuracy_mean"] == pytest.approx(np.mean(accuracies), abs=5e-5)
    # Student's t over the repeats (scipy's interval is NaN when the spread is 0)
    half_width = stats.t.ppf(0.975, len(accuracies) - 1) * stats.sem(accuracies)
    low, high = np.mean(accuracies) - half_width, np.mean(accuracies) + half_width
    assert parent.data.metrics["test_accuracy_ci_low"] == pytest.approx(low, abs=5e-5)
    assert parent.data.metrics["test_accuracy_ci_high"] == pytest.approx(high, abs=5e-5)
    # the headline only (evaluation.parent_metrics), as the local stages log it
    assert "test_accuracy_std" not in parent.data.metrics
    assert len(parent.data.metrics) <= 30
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "epoch_val_auc")]
        assert steps == [1, 2]
        files = {a.path for a in client.list_artifacts(child.info.run_id, "evaluation")}
        assert {"evaluation/result.json", f"evaluation/{TEST_PREDICTIONS_FILE}"} <= files
        assert child.data.metrics[N_TEST_IMAGES_METRIC] == 60  # the sample's test set


def test_import_of_a_folder_that_is_not_results_fails(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=r"manifest\.json: not found"):
        import_results(tmp_path)
    shutil.rmtree(tmp_path)


def test_import_reads_the_archive_a_device_call_returns(
    chunks: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tarfile

    packed = tmp_path / "results.tar.gz"
    with tarfile.open(packed, "w:gz") as archive:
        archive.add(chunks[0], arcname="results")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents = import_results(packed)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(parents["tiny"]).data.tags["medimg.imported"] == "true"


def test_import_of_150_params_and_2000_history_points_keeps_within_mlflows_limits(
    chunks: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each LogBatch request goes to the store as sent (no client-side splitting, as a
    REST request reaches a server), which refuses one over MLflow's limits."""
    folder = tmp_path / "results"
    shutil.copytree(chunks[0], folder)
    run_file = folder / "tiny" / "run.json"
    record = json.loads(run_file.read_text())
    record["model_options"].update({f"extra_{i}": i for i in range(150)})
    run_file.write_text(json.dumps(record))
    seed_dir = folder / "tiny" / "seed-0"
    epochs = 200  # x 10 columns: 2,000 history points
    history = pd.DataFrame({f"c{k}": np.linspace(0, 1, epochs) + k for k in range(10)})
    history.insert(0, "epoch", range(epochs))
    history.to_csv(seed_dir / "history.csv", index=False)

    def as_sent(client, run_id, metrics=(), params=(), tags=(), synchronous=True):
        client._tracking_client.store.log_batch(run_id, list(metrics), list(params), list(tags))

    monkeypatch.setattr(MlflowClient, "log_batch", as_sent)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = import_results(folder)["tiny"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.get_run(parent).info.experiment_id
    (child,) = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sum(key.startswith("model_options.extra_") for key in child.data.params) == 150
    for k in range(10):
        points = client.get_metric_history(child.info.run_id, f"epoch_c{k}")
        assert sorted(m.step for m in points) == list(range(1, epochs + 1))
