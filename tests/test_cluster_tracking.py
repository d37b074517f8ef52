"""The train stage against a real MLflow tracking server on a real PostgreSQL cluster.

The server is the session's (tests/conftest.py); the restart test starts its
own second server on the same database, so that killing it disturbs no other test.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from medimg.config.params import Params
from medimg.team.mlflow_server import start_mlflow_server, stop_process_group
from medimg.team.stack import Stack, free_port
from medimg.tracking import store
from medimg.training import mlflow_logger
from medimg.training.train_stage import run_train

# The tiny configuration and prepared arrays of the train stage's own tests.
from test_train_stage import EPOCHS, _params, _write_prepared

pytestmark = pytest.mark.cluster


def _tiny_params(experiment_prefix: str) -> Params:
    """The train stage tests' params, with an experiment of this test's own on the shared server."""
    params = _params()
    update = {"experiment_prefix": experiment_prefix, "registered_model_prefix": experiment_prefix}
    return dataclasses.replace(params, tracking=params.tracking.model_copy(update=update))


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project root holding the tiny prepared arrays."""
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    _write_prepared(tmp_path)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


def _runs(client: MlflowClient, experiment_id: str) -> dict[str, str]:
    """{run name: status} of every run of the experiment."""
    return {r.info.run_name: r.info.status for r in client.search_runs([experiment_id])}


def test_training_logs_runs_metrics_and_model_to_the_server(
    cluster_stack: Stack, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cluster_stack.tracking_uri)
    summary = run_train(_tiny_params("served").run_settings("tiny"))

    # Read back through the server, as a colleague on another machine would.
    client = MlflowClient(cluster_stack.tracking_uri)
    assert summary["tracking_uri"] == cluster_stack.tracking_uri
    assert client.get_experiment(summary["experiment_id"]).name == "served-chest_xray"
    assert _runs(client, summary["experiment_id"]) == {
        "tiny": "FINISHED",
        "tiny/seed-0": "FINISHED",
        "tiny/seed-1": "FINISHED",
    }
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.params["run.epochs"] == str(EPOCHS)
    values = [s["best_val_auc"] for s in summary["seeds"]]
    assert parent.data.metrics["best_val_auc_mean"] == pytest.approx(np.mean(values))
    for seed in summary["seeds"]:
        child_id = seed["child_run_id"]
        assert client.get_run(child_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
        steps = [m.step for m in client.get_metric_history(child_id, "epoch_val_auc")]
        assert steps == list(range(1, EPOCHS + 1))
        assert "history.csv" in {a.path for a in client.list_artifacts(child_id)}

    # The registered model comes back through the server (proxied artifacts) and loads.
    version = client.get_model_version_by_alias("served-chest_xray", "champion")
    assert version.run_id in {s["child_run_id"] for s in summary["seeds"]}
    mlflow.set_tracking_uri(cluster_stack.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/served-chest_xray@champion")
    assert model.metadata.run_id == version.run_id
    assert any(Path(cluster_stack.artifacts_destination).rglob("MLmodel"))


def test_postgresql_store_with_a_wrong_password_or_database_is_one_line(
    cluster_stack: Stack,
) -> None:
    """MLFLOW_TRACKING_URI straight at the real PostgreSQL: a usable URL passes, bad ones fail."""
    good = cluster_stack.database_url("mlflow", host="127.0.0.1")
    store.ensure_reachable(good)
    wrong_password = good.replace(f":{cluster_stack.password}@", ":not-it@")
    missing_database = good.removesuffix("/mlflow") + "/nothing"
    for uri, reason in [
        (wrong_password, 'password authentication failed for user "medimg"'),
        (missing_database, 'database "nothing" does not exist'),
    ]:
        with pytest.raises(store.TrackingError) as raised:
            store.ensure_reachable(uri, timeout_s=3)
        message = str(raised.value)
        assert "\n" not in message and reason in message
        assert message.startswith(f"MLflow store {store.masked_uri(uri)}: cannot connect")
        assert cluster_stack.password not in message and "not-it" not in message


class _Server:
    """A second `mlflow server` on the session's database, for this test alone to kill."""

    def __init__(self, stack: Stack, log_file: Path) -> None:
        self.stack = stack
        self.log_file = log_file
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = self._start()

    def _start(self):
        return start_mlflow_server(
            self.stack.database_url("mlflow", host="127.0.0.1"),
            self.stack.artifacts_destination,
            "127.0.0.1",
            self.port,
            self.log_file,
            workers=1,
        )

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no graceful shutdown."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def restart_in_background(self) -> threading.Thread:
        def restart() -> None:
            self.process = self._start()

        thread = threading.Thread(target=restart)
        thread.start()
        return thread

    def stop(self) -> None:
        stop_process_group(self.process.pid)


@pytest.fixture
def own_server(cluster_stack: Stack, tmp_path: Path) -> Iterator[_Server]:
    server = _Server(cluster_stack, tmp_path / "mlflow.log")
    yield server
    server.stop()


def test_training_carries_on_when_the_tracking_server_restarts(
    own_server: _Server, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server dies after the first epoch and is back ~10 s later (a restart)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", own_server.uri)
    events: list[tuple[str, float]] = []
    restarts: list[threading.Thread] = []

    class KillServerAfterFirstEpoch(mlflow_logger.MlflowEpochLogger):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if not restarts:
                own_server.kill()
                events.append(("killed", time.monotonic()))
                restarts.append(own_server.restart_in_background())
            super().on_epoch_end(epoch, logs)
            events.append((f"logged epoch {epoch + 1}", time.monotonic()))

    monkeypatch.setattr(mlflow_logger, "MlflowEpochLogger", KillServerAfterFirstEpoch)
    summary = run_train(_tiny_params("restarted").run_settings("tiny"))
    restarts[0].join()

    client = MlflowClient(own_server.uri)
    assert set(_runs(client, summary["experiment_id"]).values()) == {"FINISHED"}
    assert len(_runs(client, summary["experiment_id"])) == 3
    for seed in summary["seeds"]:
        steps = [m.step for m in client.get_metric_history(seed["child_run_id"], "epoch_loss")]
        assert steps == list(range(1, EPOCHS + 1))
    # MLflow's client retried the dead server until it was back (a restart takes seconds)
    waited = dict(events)["logged epoch 1"] - dict(events)["killed"]
    assert waited > 2


def _exception_chain(err: BaseException | None) -> Iterator[BaseException]:
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def test_training_stopped_by_a_long_outage_resumes_on_rerun(
    own_server: _Server, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stays down past the client's retries: the stage stops; re-run, it resumes."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", own_server.uri)
    # One quick retry stands in for MLflow's four minutes of them.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    real_logger = mlflow_logger.MlflowEpochLogger

    class KillServerAfterFirstEpoch(real_logger):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch == 0:
                own_server.kill()
            super().on_epoch_end(epoch, logs)

    monkeypatch.setattr(mlflow_logger, "MlflowEpochLogger", KillServerAfterFirstEpoch)
    with pytest.raises(Exception) as raised:
        run_train(_tiny_params("outage").run_settings("tiny"))
    errors = [e for e in _exception_chain(raised.value) if isinstance(e, store.TrackingError)]
    assert errors, f"no TrackingError in {raised.value!r}"
    message = str(errors[0])
    assert "\n" not in message
    assert f"MLflow store {own_server.uri} failed while logging epoch 1" in message
    assert "re-run the stage to resume" in message

    own_server.process = own_server._start()
    monkeypatch.setattr(mlflow_logger, "MlflowEpochLogger", real_logger)
    client = MlflowClient(own_server.uri)
    experiment_id = client.get_experiment_by_name("outage-chest_xray").experiment_id
    # nothing could tell the server: the runs are RUNNING until the re-run finishes them
    assert _runs(client, experiment_id) == {"tiny": "RUNNING", "tiny/seed-0": "RUNNING"}

    summary = run_train(_tiny_params("outage").run_settings("tiny"))
    assert _runs(client, experiment_id) == {
        "tiny": "FINISHED",
        "tiny/seed-0": "FINISHED",
        "tiny/seed-1": "FINISHED",
    }
    seed_0 = summary["seeds"][0]
    assert seed_0["resumed_from_epoch"] == 1  # the finished epoch was not trained again
    steps = [m.step for m in client.get_metric_history(seed_0["child_run_id"], "epoch_loss")]
    assert steps == list(range(1, EPOCHS + 1))
