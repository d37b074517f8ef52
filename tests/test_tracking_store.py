"""The tracking store is checked before any training, each problem one line naming it.

Real files, permissions and sockets. Tests run as root in CI, where permission
bits stop nothing: there, read-only means the immutable flag (chattr +i).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from medimg import paths
from medimg.tracking import store as tracking_store
from medimg.training.train_stage import run_train

# The tiny configuration and prepared arrays of the train stage's own tests.
from test_train_stage import _params, _write_prepared


@pytest.fixture
def make_read_only() -> Iterator[Callable[[Path], None]]:
    """Make a file or folder read-only for this process, root included; undone after the test.

    Each call checks that a write really fails, so no test passes on a path
    that only looks read-only.
    """
    undo: list[Callable[[], None]] = []

    def make(path: Path) -> None:
        if os.geteuid() == 0:
            flagged = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
            if flagged.returncode != 0:
                pytest.fail(
                    f"chattr +i {path} failed ({flagged.stderr.strip()}): as root these tests "
                    "need a filesystem with the immutable flag (ext4, xfs, btrfs)",
                    pytrace=False,
                )
            undo.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=True))
        else:
            mode = path.stat().st_mode
            path.chmod(mode & ~0o222)
            undo.append(lambda: path.chmod(mode))
        try:
            if path.is_dir():
                (path / "write-probe").touch()
            else:
                path.open("r+b").close()
        except OSError:
            return
        pytest.fail(f"{path} is still writable: the test would prove nothing", pytrace=False)

    yield make
    for action in reversed(undo):
        action()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_line_error(uri: str, timeout_s: float = 10) -> str:
    """The TrackingError of ensure_reachable(uri), checked to be a single line."""
    with pytest.raises(tracking_store.TrackingError) as raised:
        tracking_store.ensure_reachable(uri, timeout_s=timeout_s)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_sqlite_store_in_a_missing_folder_is_refused(tmp_path: Path) -> None:
    # MLflow would create /nonexistent-dir and an empty store in it without a word.
    missing = tmp_path / "nonexistent-dir"
    message = _one_line_error(f"sqlite:///{missing / 'x.db'}")
    assert f"sqlite:///{missing / 'x.db'}" in message
    assert f"the folder {missing} does not exist" in message
    assert not missing.exists()


def test_sqlite_store_under_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    message = _one_line_error(f"sqlite:///{blocker / 'mlflow.db'}")
    assert f"{blocker} is not a folder" in message


def test_the_default_store_folder_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert not paths.mlruns_dir().exists()
    tracking_store.ensure_reachable()
    assert paths.mlruns_dir().is_dir()
    # the same folder named explicitly is the default store too
    other = tmp_path / "elsewhere" / "mlruns"
    with pytest.raises(tracking_store.TrackingError, match="does not exist"):
        tracking_store.ensure_reachable(f"sqlite:///{other / 'mlflow.db'}")


def test_read_only_database_file_is_refused(
    tmp_path: Path, make_read_only: Callable[[Path], None]
) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    uri = f"sqlite:///{db}"
    tracking_store.ensure_reachable(uri)  # writable: accepted
    make_read_only(db)
    message = _one_line_error(uri)
    assert f"the database file {db} is not writable" in message
    assert uri in message


def test_read_only_store_folder_is_refused(
    tmp_path: Path, make_read_only: Callable[[Path], None]
) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    make_read_only(folder)
    message = _one_line_error(f"sqlite:///{folder / 'mlflow.db'}")
    assert f"the folder {folder} is not writable" in message


def test_read_only_artifact_folder_is_refused_before_training(
    tmp_path: Path, make_read_only: Callable[[Path], None]
) -> None:
    store = tmp_path / "mlruns"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    experiment_folder = store / "artifacts" / "medimg-chest_xray"
    experiment_folder.mkdir(parents=True)
    make_read_only(experiment_folder)
    # another experiment's folder does not exist yet: its parent is writable, so it is fine
    tracking_store.ensure_reachable(uri, experiment="medimg-brain_tumor_mri")
    with pytest.raises(tracking_store.TrackingError) as raised:
        tracking_store.ensure_reachable(uri, experiment="medimg-chest_xray")
    message = str(raised.value)
    assert "\n" not in message
    assert f"the folder {experiment_folder} is not writable" in message

    make_read_only(store / "artifacts")  # without an experiment, the store's artifacts/ counts
    message = _one_line_error(uri)
    assert f"the folder {store / 'artifacts'} is not writable" in message


def test_train_stage_refuses_a_read_only_artifact_folder_before_any_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_read_only: Callable[[Path], None]
) -> None:
    # Without the check, MLflow fails on the first artifact: after every epoch of a seed.
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _write_prepared(tmp_path)
    artifacts = tmp_path / "mlruns" / "artifacts"
    artifacts.mkdir(parents=True)
    make_read_only(artifacts)
    with pytest.raises(
        tracking_store.TrackingError, match=f"the folder {artifacts} is not writable"
    ):
        run_train(_params().run_settings("tiny"))
    assert not (tmp_path / "models").exists()
    assert not paths.work_dir("tiny").exists()


def test_artifacts_on_a_server_or_bucket_are_not_checked_locally() -> None:
    tracking_store.ensure_artifacts_writable("mlflow-artifacts:/3")
    tracking_store.ensure_artifacts_writable("s3://bucket/medimg")
    tracking_store.ensure_artifacts_writable(None)


def test_postgresql_store_that_is_down_fails_in_seconds_with_the_password_masked() -> None:
    uri = f"postgresql://medimg:s3cret@127.0.0.1:{_closed_port()}/mlflow"
    started = time.monotonic()
    message = _one_line_error(uri, timeout_s=3)
    assert time.monotonic() - started < 5  # MLflow's own engine would retry for ~100 s
    assert uri.replace("s3cret", "***") in message
    assert "s3cret" not in message
    assert "cannot connect to PostgreSQL" in message


def test_train_stage_with_postgresql_down_fails_before_any_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"postgresql://medimg:s3cret@127.0.0.1:{_closed_port()}/mlflow"
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    _write_prepared(tmp_path)
    started = time.monotonic()
    with pytest.raises(tracking_store.TrackingError) as raised:
        run_train(_params().run_settings("tiny"))
    assert time.monotonic() - started < 10
    assert str(raised.value).startswith(f"MLflow store {uri.replace('s3cret', '***')}: ")
    assert not (tmp_path / "models").exists()
    assert not paths.work_dir("tiny").exists()


def test_postgresql_driver_suffix_is_accepted() -> None:
    uri = f"postgresql+psycopg://medimg:s3cret@127.0.0.1:{_closed_port()}/mlflow"
    message = _one_line_error(uri, timeout_s=3)
    assert "postgresql+psycopg://medimg:***@127.0.0.1" in message


def test_masked_uri_hides_only_the_password() -> None:
    assert (
        tracking_store.masked_uri("postgresql://u:p%40ss@db:5432/x")
        == "postgresql://u:***@db:5432/x"
    )
    assert tracking_store.masked_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert tracking_store.masked_uri("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_shareable_uri_names_the_project_store_relative_and_masks_passwords(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setenv("MEDIMG_ROOT", str(project))
    inside = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    assert tracking_store.shareable_uri(inside) == "sqlite:///mlruns/mlflow.db"
    outside = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert tracking_store.shareable_uri(outside) == outside
    assert (
        tracking_store.shareable_uri("postgresql://u:pw@db:5432/x")
        == "postgresql://u:***@db:5432/x"
    )
