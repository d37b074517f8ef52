"""MLflow tracking helpers against a real sqlite store and a real loopback HTTP server."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from medimg.tracking import batch, model_registry, runs
from medimg.tracking import store as tracking_store
from medimg.training import mlflow_logger


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowClient]:
    """A sqlite MLflow store, made the tracking URI; shared because creating one takes seconds."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MEDIMG_ROOT", str(root))
        mlflow.set_tracking_uri(uri)
        yield MlflowClient(uri)
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def experiment_id(store: MlflowClient, request: pytest.FixtureRequest) -> str:
    """A fresh experiment per test, named after it."""
    return tracking_store.get_or_create_experiment(store, request.node.name)


SEED_0 = {"medimg.seed": "0"}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[str, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_flatten_params_dots_keys_and_writes_non_strings_as_json() -> None:
    flat = runs.flatten_params(
        {"epochs": 3, "augmentation": {"zoom_range": (1.0, 1.2), "where": "auto"}, "x": None},
        prefix="run.",
    )
    assert flat == {
        "run.epochs": "3",
        "run.augmentation.zoom_range": "[1.0, 1.2]",
        "run.augmentation.where": "auto",
        "run.x": "null",
    }


def test_flatten_params_cuts_values_to_the_portable_limit() -> None:
    flat = runs.flatten_params({"long": "a" * 1000, "short": "b" * 500, "empty": {}})
    assert len(flat["long"]) == 500
    assert flat["long"].endswith("...")
    assert flat["short"] == "b" * 500
    assert flat["empty"] == "{}"


def test_unreachable_server_fails_fast_naming_the_uri() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(tracking_store.TrackingError, match=uri):
        tracking_store.ensure_reachable(uri, timeout_s=2)


def test_server_health_decides_reachability(health_server: tuple[str, type[_Health]]) -> None:
    uri, handler = health_server
    tracking_store.ensure_reachable(uri)
    handler.status = 503
    with pytest.raises(tracking_store.TrackingError, match=uri):
        tracking_store.ensure_reachable(uri)


def test_default_store_is_sqlite_under_root_with_artifacts_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    assert tracking_store.tracking_uri() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    expected = (tmp_path / "mlruns" / "artifacts").as_uri() + "/medimg-chest_xray"
    assert tracking_store.artifact_location("medimg-chest_xray") == expected
    assert tracking_store.artifact_location("x", "http://mlflow.example.org") is None


def test_experiment_is_created_once_with_its_artifact_location(store: MlflowClient) -> None:
    name = tracking_store.experiment_name("medimg", "chest_xray")
    assert name == "medimg-chest_xray"
    first = tracking_store.get_or_create_experiment(store, name)
    assert tracking_store.get_or_create_experiment(store, name) == first
    location = store.get_experiment(first).artifact_location
    store_folder = Path(store.tracking_uri.removeprefix("sqlite:///")).parent
    assert location == (store_folder / "artifacts").as_uri() + "/medimg-chest_xray"
    store.delete_experiment(first)
    with pytest.raises(tracking_store.TrackingError, match="deleted"):
        tracking_store.get_or_create_experiment(store, name)


def test_experiments_are_of_the_machine_learning_kind(store: MlflowClient) -> None:
    """MLflow 3's UI opens an experiment of this kind on its training runs (FACTS.md)."""
    kind = "mlflow.experimentKind"
    created = tracking_store.get_or_create_experiment(store, "kind-new")
    assert store.get_experiment(created).tags[kind] == "custom_model_development"
    # made before medimg set the kind (an older store): tagged when next used
    older = store.create_experiment("kind-older")
    assert kind not in store.get_experiment(older).tags
    assert tracking_store.get_or_create_experiment(store, "kind-older") == older
    assert store.get_experiment(older).tags[kind] == "custom_model_development"
    # a kind someone chose is theirs
    chosen = store.create_experiment("kind-chosen", tags={kind: "genai_development"})
    tracking_store.get_or_create_experiment(store, "kind-chosen")
    assert store.get_experiment(chosen).tags[kind] == "genai_development"


def test_a_saved_view_is_an_envelope_the_ui_lists_and_is_written_once(
    store: MlflowClient,
) -> None:
    """The UI's saved-view format (MLflow 3.17's bundle): it lists the view under "Views"."""
    experiment = tracking_store.get_or_create_experiment(store, "views")
    tag = "mlflow.sharedViewState.key"
    store.set_experiment_tag(experiment, tag, '{"selectedColumns": []}')  # an older, plain one
    state = {"selectedColumns": ["metrics.`test_accuracy_mean`"]}
    tracking_store.save_shared_view(store, experiment, "key", "Headline", state)
    envelope = json.loads(store.get_experiment(experiment).tags[tag])
    assert envelope["name"] == "Headline" and json.loads(envelope["state"]) == state
    assert isinstance(envelope["createdAt"], int) and envelope["updatedAt"] >= envelope["createdAt"]
    time.sleep(0.01)  # a rewrite would have another updatedAt
    tracking_store.save_shared_view(store, experiment, "key", "Headline", state)  # unchanged
    assert json.loads(store.get_experiment(experiment).tags[tag]) == envelope
    link = tracking_store.shared_view_link("http://127.0.0.1:5000/", experiment, "key")
    runs = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs"
    assert link == f"{runs}?viewStateShareKey=key&workflowType=machine_learning"


def test_epoch_logger_logs_every_epoch_and_continues_steps_on_resume(
    store: MlflowClient, experiment_id: str
) -> None:
    run_id = store.create_run(experiment_id).info.run_id
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    logger = mlflow_logger.MlflowEpochLogger(run_id)
    model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0, callbacks=[logger])
    # a resumed fit starts at the epoch where the interrupted one stopped
    model.fit(x, y, epochs=3, initial_epoch=2, verbose=0, callbacks=[logger])

    assert [m.step for m in store.get_metric_history(run_id, "epoch_loss")] == [1, 2, 3]
    assert [m.step for m in store.get_metric_history(run_id, "epoch_val_accuracy")] == [1, 2]


def test_resumable_run_continues_the_run_named_in_its_id_file(
    store: MlflowClient, experiment_id: str, tmp_path: Path
) -> None:
    id_file = tmp_path / "work" / "seed-0.mlflow_run_id"
    with (
        pytest.raises(RuntimeError, match="killed"),
        runs.resumable_run(id_file, experiment_id, "r/seed-0", SEED_0, SEED_0) as run,
    ):
        mlflow.log_metric("loss", 1.0, step=1)
        raise RuntimeError("killed")
    assert store.get_run(run.info.run_id).info.status == "FAILED"
    with runs.resumable_run(id_file, experiment_id, "r/seed-0", SEED_0, SEED_0) as again:
        mlflow.log_metric("loss", 0.5, step=2)
    assert again.info.run_id == run.info.run_id == id_file.read_text()
    assert store.get_run(run.info.run_id).info.status == "FINISHED"
    assert [m.step for m in store.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert len(store.search_runs([experiment_id])) == 1


def test_a_store_failure_ends_a_database_run_that_can_be_ended(
    store: MlflowClient, experiment_id: str, tmp_path: Path
) -> None:
    """TrackingError from a database store (it fails at once, not after minutes of retries
    like a server): the run is ended FAILED when the store still answers, and is off the
    active stack; the process can start the run again. (A server's run is left RUNNING:
    tests/test_cluster_tracking.py.)"""
    id_file = tmp_path / "work" / "seed-0.mlflow_run_id"
    with (
        pytest.raises(tracking_store.TrackingError),
        runs.resumable_run(id_file, experiment_id, "r/seed-0", SEED_0, SEED_0) as run,
    ):
        raise tracking_store.TrackingError("store down")
    assert mlflow.active_run() is None
    assert store.get_run(run.info.run_id).info.status == "FAILED"
    with runs.resumable_run(id_file, experiment_id, "r/seed-0", SEED_0, SEED_0) as again:
        pass
    assert again.info.run_id == run.info.run_id
    assert store.get_run(run.info.run_id).info.status == "FINISHED"


def test_run_tags_name_the_commit_and_whether_the_tree_is_dirty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    tags = runs.run_tags("xray_cnn", "f" * 64, "official", seed=3)
    assert tags["medimg.git_commit"] == "unknown"  # tmp_path is no repository
    assert tags["medimg.seed"] == "3"
    assert tags["medimg.dataset_fingerprint"] == "f" * 64
    assert tags["medimg.keras_backend"] == keras.backend.backend()
    assert tags["medimg.versions.keras"] == keras.__version__
    assert tags["medimg.device"]

    def git(*args: str) -> str:
        command = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
        return subprocess.run([*command, *args], check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("commit", "-qm", "first")
    clean = runs.run_tags("xray_cnn", "f" * 64, "official")
    assert clean["medimg.git_commit"] == git("rev-parse", "HEAD").strip()
    assert clean["medimg.git_dirty"] == "false"
    (tmp_path / "a.txt").write_text("changed")
    assert runs.run_tags("xray_cnn", "f" * 64, "official")["medimg.git_dirty"] == "true"


def test_alias_names_are_sanitised_and_reserved_ones_refused() -> None:
    assert model_registry.alias_name("xray cnn/aug-best") == "xray-cnn-aug-best"
    for reserved in ("latest", "v3"):
        with pytest.raises(ValueError, match="alias"):
            model_registry.alias_name(reserved)


def _logged_model(experiment_id: str, run_name: str) -> tuple[str, str]:
    """(logged model id, run id) of a tiny Keras model logged in a fresh run."""
    layers = [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(1)]
    model = keras.Sequential(layers)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        model_id = mlflow.keras.log_model(model, name="model").model_id
    return model_id, run.info.run_id


@pytest.mark.slow
def test_champion_alias_follows_the_best_validation_auc(
    store: MlflowClient, experiment_id: str
) -> None:
    name = model_registry.registered_model_name("medimg", "chest_xray")
    versions, logged = {}, {}
    for run_name, auc in [("cnn", 0.80), ("cnn_aug", 0.90), ("cnn_wide", 0.85)]:
        model_id, run_id = logged[run_name] = _logged_model(experiment_id, run_name)
        versions[run_name] = model_registry.register_best(
            store, model_id, run_id, name, run_name, seed=1, best_val_auc=auc
        )

    assert versions["cnn"]["aliases"] == ["champion", "cnn-best"]
    assert versions["cnn_wide"]["aliases"] == ["cnn_wide-best"]
    champion = store.get_model_version_by_alias(name, "champion")
    assert int(champion.version) == versions["cnn_aug"]["version"]
    assert champion.tags["medimg.run"] == "cnn_aug"
    assert champion.tags["medimg.seed"] == "1"
    assert int(store.get_model_version_by_alias(name, "cnn_wide-best").version) == 3
    # Registering the same model again (a stage killed before it recorded the version)
    # gives the same version, not a new one.
    model_id, run_id = logged["cnn_aug"]
    again = model_registry.register_best(
        store, model_id, run_id, name, "cnn_aug", seed=1, best_val_auc=0.90
    )
    assert again == versions["cnn_aug"]
    assert len(store.search_model_versions(f"name = '{name}'")) == 3


def test_batch_requests_keep_within_mlflows_limits() -> None:
    """150 params, 120 tags and 2,000 metrics: every item once, each request within
    100 params, 100 tags, 1,000 metrics and 1,000 items."""
    metrics = [Metric(f"m{i}", float(i), 0, i) for i in range(2000)]
    params = [Param(f"p{i}", str(i)) for i in range(150)]
    tags = [RunTag(f"t{i}", str(i)) for i in range(120)]
    requests = batch.requests(metrics, params, tags)
    for some_metrics, some_params, some_tags in requests:
        assert len(some_params) <= batch.MAX_PARAMS == 100
        assert len(some_tags) <= batch.MAX_TAGS == 100
        assert len(some_metrics) <= batch.MAX_METRICS == 1000
        assert len(some_metrics) + len(some_params) + len(some_tags) <= batch.MAX_ITEMS == 1000
    assert [m for r in requests for m in r[0]] == metrics
    assert [p for r in requests for p in r[1]] == params
    assert [t for r in requests for t in r[2]] == tags
    assert len(requests) == 3  # 800 + 1,000 + 200 metrics beside 100+50 params, 100+20 tags


def test_each_metric_step_is_logged_once(store: MlflowClient, experiment_id: str) -> None:
    run_id = store.create_run(experiment_id).info.run_id
    first = batch.metrics_at({"best_val_auc": 0.8, "undefined": float("nan")})
    batch.log_batch(store, run_id, metrics=batch.not_logged(store, run_id, first))
    again = batch.metrics_at({"best_val_auc": 0.8, "train_seconds": 3.0})
    batch.log_batch(store, run_id, metrics=batch.not_logged(store, run_id, again))
    assert len(store.get_metric_history(run_id, "best_val_auc")) == 1
    assert len(store.get_metric_history(run_id, "train_seconds")) == 1
    assert "undefined" not in store.get_run(run_id).data.metrics  # NaN stays out


@pytest.mark.slow
def test_a_run_of_another_store_is_never_resumed(
    store: MlflowClient, experiment_id: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The id file names a run of another store (MLFLOW_TRACKING_URI changed): one line
    says so, and the training gets a new run here; the other store is not touched."""
    other = MlflowClient(f"sqlite:///{tmp_path / 'other.db'}")
    elsewhere = other.create_run(other.create_experiment("e")).info.run_id
    id_file = tmp_path / "work" / "parent.mlflow_run_id"
    id_file.parent.mkdir()
    id_file.write_text(elsewhere)
    with runs.resumable_run(id_file, experiment_id, "r", SEED_0, SEED_0) as run:
        pass
    assert run.info.run_id != elsewhere == other.get_run(elsewhere).info.run_id
    assert id_file.read_text() == run.info.run_id
    assert store.get_run(run.info.run_id).info.status == "FINISHED"
    assert other.get_run(elsewhere).info.status == "RUNNING"  # untouched
    notes = [r.getMessage() for r in caplog.records if elsewhere in r.getMessage()]
    assert len(notes) == 1 and "is not in the store" in notes[0]


def test_a_run_killed_before_its_id_was_written_is_found_by_its_tags(
    store: MlflowClient, experiment_id: str, tmp_path: Path
) -> None:
    identity = {runs.WORK_TAG: "w1", "medimg.role": "parent"}
    orphan = store.create_run(experiment_id, tags=identity).info.run_id  # no id file
    id_file = tmp_path / "parent.mlflow_run_id"
    with runs.resumable_run(id_file, experiment_id, "r", identity, identity) as run:
        pass
    assert run.info.run_id == orphan == id_file.read_text()
    other_work = {runs.WORK_TAG: "w2", "medimg.role": "parent"}
    with runs.resumable_run(tmp_path / "w2", experiment_id, "r", other_work, other_work) as new:
        pass
    assert new.info.run_id != orphan
