"""Trainings that survive any kill, one training per run at a time, no orphaned MLflow runs."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from medimg.tracking import runs
from medimg.training import mlflow_logger
from medimg.training.checkpoints import (
    EpochRecorder,
    ResumeState,
    ResumeStateError,
    write_history,
)
from medimg.training.run_lock import RunLockedError, exclusive_run

pytestmark = pytest.mark.slow  # each test trains, or runs a server

EPOCHS = 40
TRAINER = textwrap.dedent(
    f"""
    import sys
    from pathlib import Path
    from medimg.config.runs import RunConfig
    from medimg.data.prepared import load_prepared
    from medimg.training.fit import fit_one_seed

    run = RunConfig(dataset="chest_xray", split_protocol="official", model="xray_cnn",
                    model_options={{"feature_maps": 2, "dense_units": [4]}},
                    epochs={EPOCHS}, batch_size=8, checkpoint_every_s=0)
    data = load_prepared(Path(sys.argv[1]))
    print("started", flush=True)
    fit_one_seed(run, data, Path(sys.argv[2]), seed=0, verbose=0)
    print("finished", flush=True)
    """
)


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    from test_fit import write_prepared

    write_prepared(tmp_path / "chest_xray", ["NORMAL", "PNEUMONIA"], n=16, size=16)
    return tmp_path / "chest_xray"


def _start(prepared: Path, work: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(prepared), str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _epochs_done(work: Path) -> int:
    state = ResumeState(work / "seed-0").read()
    return 0 if state is None else state.epoch


def test_sigkill_at_any_instant_then_resume_trains_every_epoch_once(
    prepared: Path, tmp_path: Path
) -> None:
    """Kill the training at random instants (the state is written at every epoch end,
    several times a second here), resume each time; the last run finishes."""
    work = tmp_path / "work"
    rng = random.Random(0)
    kills = 0
    while kills < 5:
        process = _start(prepared, work)
        assert process.stdout.readline().strip() == "started", process.stderr.read()
        before = _epochs_done(work)
        deadline = time.monotonic() + 60
        # Wait until at least one more epoch has been saved, then kill at a random instant.
        while _epochs_done(work) <= before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if process.poll() is not None:
            break  # finished before we could kill it
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    process = _start(prepared, work)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert "finished" in out
    assert kills == 5
    history = pd.read_csv(work / "seed-0" / "history.csv")
    assert history["epoch"].tolist() == list(range(EPOCHS))  # every epoch exactly once
    state = ResumeState(work / "seed-0").read()
    assert state.finished and state.epoch == EPOCHS
    assert (work / "seed-0" / "best.keras").is_file()
    assert not list((work / "seed-0").glob(".*.partial*"))  # no half-written file left behind


def test_a_damaged_latest_state_falls_back_to_the_epoch_before(
    prepared: Path, tmp_path: Path
) -> None:
    from medimg.config.runs import RunConfig
    from medimg.data.prepared import load_prepared
    from medimg.training.fit import fit_one_seed

    run = RunConfig(
        dataset="chest_xray",
        split_protocol="official",
        model="xray_cnn",
        model_options={"feature_maps": 2, "dense_units": [4]},
        epochs=4,
        batch_size=8,
        checkpoint_every_s=0,  # a state after every epoch: there is an epoch before
    )
    data = load_prepared(prepared)
    work = tmp_path / "work"

    class Kill(__import__("keras").callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_one_seed(run, data, work, seed=0, callbacks=[Kill()], verbose=0)
    state = ResumeState(work / "seed-0").read()
    assert state.epoch == 3 and state.previous["epoch"] == 2
    (work / "seed-0" / "state" / state.weights).write_bytes(b"not hdf5")  # damage from outside
    result = fit_one_seed(run, data, work, seed=0, verbose=0)
    assert result.resumed_from_epoch == 2  # the previous epoch's state
    assert pd.read_csv(work / "seed-0" / "history.csv")["epoch"].tolist() == [0, 1, 2, 3]


def test_unreadable_state_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    state_dir = tmp_path / "seed-0" / "state"
    state_dir.mkdir(parents=True)
    (state_dir / "state.json").write_text("{not json")
    with pytest.raises(ResumeStateError, match=r"state\.json: unreadable resume state.*delete"):
        ResumeState(tmp_path / "seed-0").read()


def test_a_second_training_of_the_same_run_is_refused_naming_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "xray_cnn.lock"
    with (
        exclusive_run(lock, "run 'xray_cnn'"),
        pytest.raises(RunLockedError) as caught,
        exclusive_run(lock, "run 'xray_cnn'"),
    ):
        pass
    message = str(caught.value)
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message
    with exclusive_run(lock, "run 'xray_cnn'"):  # released when the block ended
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / "xray_cnn.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from pathlib import Path
            from medimg.training.run_lock import exclusive_run
            with exclusive_run(Path({str(lock)!r}), "run"):
                print("locked", flush=True)
                time.sleep(600)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunLockedError, match=f"pid {holder.pid}"), exclusive_run(lock, "run"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with exclusive_run(lock, "run"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_runs_left_running_by_dead_processes_are_closed_as_killed(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = runs.process_tags()
    orphan = client.create_run(
        experiment, tags={**here, "medimg.pid": str(dead.pid), "medimg.process_start": "1"}
    )
    alive = client.create_run(experiment, tags=here)
    elsewhere = client.create_run(
        experiment, tags={**here, "medimg.host": "another-host", "medimg.pid": str(dead.pid)}
    )
    untagged = client.create_run(experiment)

    closed = runs.close_orphaned_runs(client, [experiment])

    assert closed == [orphan.info.run_id]
    status = {
        r: client.get_run(r.info.run_id).info.status for r in (orphan, alive, elsewhere, untagged)
    }
    assert status[orphan] == "KILLED"
    assert status[alive] == status[elsewhere] == status[untagged] == "RUNNING"


def _saved_seed_dir(folder: Path, history: dict[str, list[float]], saved: int) -> Path:
    """A seed folder whose history.csv holds `history` and whose resume state holds `saved`
    epochs (rows after it were written by epochs a resume trains again)."""
    (folder / "state").mkdir(parents=True)
    write_history(folder / "history.csv", history)
    state = {"epoch": saved, "phase": 0, "weights": f"epoch-{saved:04d}.weights.h5"}
    (folder / "state" / "state.json").write_text(json.dumps(state))
    return folder


def test_epoch_logger_logs_the_saved_history_once_and_nothing_after_it(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(experiment).info.run_id
    mlflow_logger.MlflowEpochLogger(run_id, uri).on_epoch_end(0, {"loss": 0.9, "val_auc": 0.5})
    # Killed when epoch 3 was in history.csv but the resume state held 2 epochs, epoch 2
    # never logged: the resume logs epoch 2, not epoch 3 (it is trained again).
    history = {"loss": [0.9, 0.8, 0.75], "val_auc": [0.5, 0.6, 0.65]}
    seed_dir = _saved_seed_dir(tmp_path / "seed-0", history, saved=2)
    resumed = mlflow_logger.MlflowEpochLogger(run_id, uri, seed_dir)
    resumed.on_train_begin()
    resumed.catch_up()  # again (the train stage calls it after every training): no effect
    points = client.get_metric_history(run_id, "epoch_loss")
    assert sorted((m.step, m.value) for m in points) == [(1, 0.9), (2, 0.8)]
    # The retrained epoch 3 is logged once the resume state holds it, not before.
    resumed.on_epoch_end(2, {"loss": 0.7, "val_auc": 0.7})
    assert [m.step for m in client.get_metric_history(run_id, "epoch_loss")] == [1, 2]
    write_history(seed_dir / "history.csv", {"loss": [0.9, 0.8, 0.7], "val_auc": [0.5, 0.6, 0.7]})
    (seed_dir / "state" / "state.json").write_text(
        json.dumps({"epoch": 3, "phase": 0, "weights": "epoch-0003.weights.h5"})
    )
    resumed.on_train_end()
    points = client.get_metric_history(run_id, "epoch_loss")
    assert sorted((m.step, m.value) for m in points) == [(1, 0.9), (2, 0.8), (3, 0.7)]


def test_logging_that_failed_after_training_is_redone_without_training_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medimg.training import train_stage
    from test_train_stage import _params, _write_prepared

    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _write_prepared(tmp_path)
    fits: list[int] = []
    real_fit, real_log = train_stage.fit_one_seed, train_stage.log_classifier_model

    def counting_fit(run, data, work, seed, callbacks=()):
        fits.append(seed)
        return real_fit(run, data, work, seed, callbacks)

    def failing_log(model_file, preprocessing, examples):
        raise OSError("artifact store is read-only")  # e.g. a full or read-only disk

    monkeypatch.setattr(train_stage, "fit_one_seed", counting_fit)
    monkeypatch.setattr(train_stage, "log_classifier_model", failing_log)
    with pytest.raises(OSError, match="read-only"):
        train_stage.run_train(_params().run_settings("tiny"))
    while mlflow.active_run():
        mlflow.end_run()
    assert fits == [0]
    monkeypatch.setattr(train_stage, "log_classifier_model", real_log)
    summary = train_stage.run_train(_params().run_settings("tiny"))
    assert fits == [0, 1]  # seed 0 was logged again, not trained again
    client = MlflowClient(summary["tracking_uri"])
    child = client.get_run(summary["seeds"][0]["child_run_id"])
    assert child.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "epoch_loss")]
    assert steps == [1, 2]


def test_history_columns_are_in_the_order_keras_logs_them(tmp_path: Path) -> None:
    """Not in a set's order, which changes with PYTHONHASHSEED (and models/<run>/ with it)."""
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    recorder = EpochRecorder(tmp_path / "seed-0", {}, "val_auc", "max", phase=0)
    recorder.set_model(model)
    (tmp_path / "seed-0").mkdir()
    logs = {key: 0.5 for key in ("loss", "auc", "accuracy", "val_loss", "val_auc", "val_x")}
    recorder.on_epoch_end(0, dict(logs))
    header = (tmp_path / "seed-0" / "history.csv").read_text().splitlines()[0]
    assert header.split(",") == ["epoch", *logs, "phase", "learning_rate"]
