"""The train stage killed at its riskiest instants, with its parent run deleted, on full disks.

Each case runs `medimg train` as a real process in its own process group and SIGKILLs
the group at a file-system event (or, at registration, right after the registry call
returns), or lets it fail on a small tmpfs; then the stage runs again (in this process)
and the MLflow store is checked exactly (`check_store`): one parent per training, one
FINISHED child per seed, every metric step once, one READY logged model per child and
none PENDING, one registry version per training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from medimg.config.params import parse_params
from medimg.training.train_stage import run_train
from tiny_data import tiny_datasets, write_tiny_prepared

pytestmark = pytest.mark.slow  # each test trains, in processes it kills

RUN = "tiny"
EXPERIMENT = "medimg-chest_xray"
REGISTERED_MODEL = "medimg-chest_xray"
# Two seeds of a tiny CNN. The resume state is written after the first epoch and after
# the last (checkpoint_every_s), so epochs 2 and 3 are trained, and in history.csv,
# before the state holds them: what a kill makes a resume train again.
TINY_RUN = {
    "dataset": "chest_xray",
    "split_protocol": "official",
    "model": "xray_cnn",
    "model_options": {"feature_maps": 4, "dense_units": [8]},
    "epochs": 4,
    "batch_size": 8,
    "repeats": 2,
    "seed": 0,
    "checkpoint_every_s": 3600,
}


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project root with the tiny prepared arrays and a params.yaml training them."""
    write_tiny_prepared(tmp_path)
    raw = {"profile": "sample", "datasets": tiny_datasets(), "runs": {RUN: TINY_RUN}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


def _uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def _start(root: Path, before: str = "", env: dict[str, str] | None = None) -> subprocess.Popen:
    """`medimg train --run tiny` in a new process group; `before`: Python run first."""
    code = f"{before}\nimport sys\nfrom medimg.cli import main\nsys.exit(main(sys.argv[1:]))"
    args = ["--params", str(root / "params.yaml"), "train", "--run", RUN]
    with (root / "stderr.txt").open("w") as err, (root / "stdout.txt").open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=root,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=err,
            start_new_session=True,
        )


def _kill_group_when(process: subprocess.Popen, root: Path, event: Callable[[], bool]) -> None:
    """SIGKILL the process group the moment `event()` is true (polled every millisecond)."""
    deadline = time.monotonic() + 600
    while not event():
        assert process.poll() is None, f"ended before the event: {_stderr_tail(root)}"
        assert time.monotonic() < deadline, "the event never came"
        time.sleep(0.001)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _stderr_tail(root: Path) -> str:
    return (root / "stderr.txt").read_text()[-3000:]


def _train_again(root: Path) -> dict:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    return run_train(parse_params(raw).run_settings(RUN))


def _children(client: MlflowClient, experiment_id: str, parent_id: str) -> list:
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def check_store(root: Path, trainings: int, work_removed: bool = True) -> list:
    """The store holds exactly `trainings` whole trainings; returns their parent runs.

    Whole: the parent and one child per seed FINISHED, every metric of every run one
    point per step, each child one logged model, READY; no logged model PENDING; one
    registry version per training, of its best child; no run RUNNING. models/tiny/
    names the latest training's runs; the work folder is gone (`work_removed`: and no
    leftover of its removal either).
    """
    client = MlflowClient(_uri(root))
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    parents = client.search_runs(
        [experiment_id], "tags.`medimg.role` = 'parent'", order_by=["attributes.start_time ASC"]
    )
    assert len(parents) == trainings
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
    assert not running
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    assert len(versions) == trainings
    version_runs = {v.run_id for v in versions}
    for parent in parents:
        assert parent.info.status == "FINISHED"
        children = _children(client, experiment_id, parent.info.run_id)
        assert sorted(c.data.tags["medimg.seed"] for c in children) == ["0", "1"]
        assert len(version_runs & {c.info.run_id for c in children}) == 1
        for run in [parent, *children]:
            assert run.info.status == "FINISHED"
            for key in run.data.metrics:
                steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
                assert len(steps) == len(set(steps)), (run.info.run_name, key, sorted(steps))
        for child in children:
            models = client.search_logged_models(
                [experiment_id], filter_string=f"source_run_id = '{child.info.run_id}'"
            )
            assert [str(m.status) for m in models] == ["READY"], child.info.run_name
    assert not _pending_models(client, experiment_id)
    summary = json.loads((root / "models" / RUN / "summary.json").read_text())
    assert summary["parent_run_id"] == parents[-1].info.run_id
    latest = _children(client, experiment_id, parents[-1].info.run_id)
    assert {s["child_run_id"] for s in summary["seeds"]} == {c.info.run_id for c in latest}
    assert not (root / ".medimg-work" / RUN).exists()
    if work_removed:
        assert sorted(p.name for p in (root / ".medimg-work").iterdir()) == ["locks"]
    return parents


def _pending_models(client: MlflowClient, experiment_id: str) -> list:
    # (A filter string on status finds nothing in MLflow 3.17's sqlite store.)
    models = client.search_logged_models([experiment_id])
    return [m for m in models if str(m.status) == "PENDING"]


def check_curves_are_the_kept_history(root: Path) -> None:
    """Each child's epoch_* curves are models/tiny/seed-<k>/history.csv, one point per epoch."""
    client = MlflowClient(_uri(root))
    summary = json.loads((root / "models" / RUN / "summary.json").read_text())
    for seed in summary["seeds"]:
        history = pd.read_csv(root / "models" / RUN / f"seed-{seed['seed']}" / "history.csv")
        for column in ("loss", "val_auc", "learning_rate"):
            points = client.get_metric_history(seed["child_run_id"], f"epoch_{column}")
            logged = sorted((m.step, m.value) for m in points)
            assert logged == list(zip(history["epoch"], history[column], strict=True))


def test_a_kill_during_the_final_cleanup_leaves_a_finished_training(root: Path) -> None:
    """Killed as the work folder goes (issue 19: a half-deleted folder was resumed into the
    previous training's runs). The training is whole; a re-run is a second one."""
    result_file = root / ".medimg-work" / RUN / "seed-1.result.json"
    seen: list[bool] = []

    def result_file_removed() -> bool:
        if result_file.is_file():
            seen.append(True)
        return bool(seen) and not result_file.exists()

    _kill_group_when(_start(root), root, result_file_removed)
    first = check_store(root, trainings=1, work_removed=False)
    _train_again(root)
    parents = check_store(root, trainings=2)
    assert parents[0].info.run_id == first[0].info.run_id


def test_a_kill_after_registering_leaves_one_version(root: Path) -> None:
    """Killed right after the registry made the version, before the stage recorded it."""
    die_after_registering = (
        "import os, signal\n"
        "from mlflow import MlflowClient\n"
        "real = MlflowClient.create_model_version\n"
        "def create_then_die(self, *args, **kwargs):\n"
        "    real(self, *args, **kwargs)\n"
        "    os.killpg(0, signal.SIGKILL)\n"
        "MlflowClient.create_model_version = create_then_die\n"
    )
    process = _start(root, before=die_after_registering)
    assert process.wait(timeout=600) == -signal.SIGKILL, _stderr_tail(root)
    assert not (root / ".medimg-work" / RUN / "registered.json").exists()
    _train_again(root)
    check_store(root, trainings=1)


def test_a_kill_while_a_model_is_logged_leaves_no_pending_model(root: Path) -> None:
    """Killed while MLflow saves seed 0's logged model (created PENDING) in its temporary
    folder: the re-run discards it and logs the model once."""
    tmp = root / "tmp"
    tmp.mkdir()
    process = _start(root, env={"TMPDIR": str(tmp)})
    _kill_group_when(process, root, lambda: any(tmp.glob("*/model/MLmodel")))
    client = MlflowClient(_uri(root))
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert len(_pending_models(client, experiment_id)) == 1  # killed while it was logged
    _train_again(root)
    check_store(root, trainings=1)


def test_a_resumed_training_logs_each_epoch_once(root: Path) -> None:
    """Killed when epochs 2 and 3 are in history.csv but not in the resume state: they are
    trained again, and each step of each curve is logged once, with the kept values."""
    process = _start(root)
    history = root / ".medimg-work" / RUN / "seed-0" / "history.csv"
    _kill_group_when(process, root, lambda: history.is_file() and _rows(history) >= 3)
    _train_again(root)
    check_store(root, trainings=1)
    check_curves_are_the_kept_history(root)


def _rows(csv: Path) -> int:
    return max(0, len(csv.read_text().splitlines()) - 1)


def test_a_deleted_parent_run_is_replaced_not_written_into(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed after seed 0 finished; the parent run is deleted by hand. The re-run says so
    in one line and logs both seeds into a new parent (seed 0 from its saved training);
    the deleted parent's runs get nothing more."""
    process = _start(root)
    _kill_group_when(process, root, (root / ".medimg-work" / RUN / "seed-0.result.json").is_file)
    client = MlflowClient(_uri(root))
    old_parent = (root / ".medimg-work" / RUN / "parent.mlflow_run_id").read_text()
    client.delete_run(old_parent)
    old_seed_0 = json.loads((root / ".medimg-work" / RUN / "seed-0.result.json").read_text())
    old_child = client.get_run(old_seed_0["child_run_id"])

    summary = _train_again(root)

    notes = [r.getMessage() for r in caplog.records if old_parent in r.getMessage()]
    assert len(notes) == 1 and "is deleted" in notes[0] and "\n" not in notes[0]
    assert summary["parent_run_id"] != old_parent
    assert summary["seeds"][0]["train_seconds"] == old_seed_0["train_seconds"]  # not retrained
    check_store(root, trainings=1)
    check_curves_are_the_kept_history(root)
    assert client.get_run(old_parent).info.lifecycle_stage == "deleted"
    after = client.get_run(old_child.info.run_id)
    assert after.data.metrics == old_child.data.metrics
    assert after.info.status == old_child.info.status == "FINISHED"


# ----------------------------------------------------------------------------- full disks


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root")


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Folders mounted by the test, unmounted after it."""
    mounted: list[Path] = []
    yield mounted
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _grow(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)


def _error_line(root: Path) -> str:
    """The process's last stderr line, after checking that it printed no traceback."""
    err = (root / "stderr.txt").read_text()
    assert "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


def _statuses(root: Path) -> set[str]:
    client = MlflowClient(_uri(root))
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return {run.info.status for run in client.search_runs([experiment_id])}


def test_a_full_work_folder_is_one_line_and_resumes_once_there_is_space(
    root: Path, mounts: list[Path]
) -> None:
    """Room for seed 0's best checkpoint, not for its first resume state (h5py's file)."""
    work = root / ".medimg-work"
    _mount_tmpfs(work, "150k")
    mounts.append(work)
    process = _start(root)
    assert process.wait(timeout=600) == 2, _stderr_tail(root)
    line = _error_line(root)
    assert line.startswith(f"medimg train: error: cannot write {work / RUN / 'seed-0'}")
    assert "no space left on device (" in line and f"free on {work}; free space there" in line
    assert not [p for p in work.rglob("*") if "partial" in p.name]
    state = work / RUN / "seed-0" / "state"
    assert not list(state.glob("*.h5"))  # the half-written weights file was removed
    assert _statuses(root) == {"FAILED"}

    _grow(work)
    _train_again(root)
    check_store(root, trainings=1)


def test_a_full_mlflow_store_is_one_line_and_resumes_once_there_is_space(
    root: Path, mounts: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sqlite store and its artifacts on a filesystem that fills while seed 0's model is
    logged: its half-copied artifacts go, which lets the store record the runs FAILED."""
    folder = root / "store"
    _mount_tmpfs(folder, "1050k")
    mounts.append(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    process = _start(root)
    assert process.wait(timeout=600) == 2, _stderr_tail(root)
    line = _error_line(root)
    assert line.startswith(f"medimg train: error: cannot write {folder}"), line
    assert "no space left on device" in line and f"free on {folder}; free space there" in line
    assert _statuses(root) == {"FAILED"}
    client = MlflowClient(_uri(root))
    assert not _pending_models(client, client.get_experiment_by_name(EXPERIMENT).experiment_id)

    _grow(folder)
    _train_again(root)
    check_store(root, trainings=1)
