"""The project's stores are found from any folder inside it, and from DVC's experiment copies.

- paths.root(): MEDIMG_ROOT, else the nearest folder up holding params.yaml + dvc.yaml
  or .dvc/ (as git and dvc find their repository);
- paths.store_root(): the workspace for an experiment DVC runs in a temporary copy
  (DVC_ROOT names it), so queued experiments log where every other run is;
- `medimg predict` and transfer learning's `weights:` resolve models:/ and runs:/
  against that store without MLFLOW_TRACKING_URI, from the root or a subfolder, and
  create no store anywhere (the serving test, tests/test_serving.py, does the same
  for `medimg serve`);
- a model registered by an experiment copy never becomes the champion.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from PIL import Image

from inference_support import (
    BINARY,
    build_model,
    gradient_image,
    log_and_register,
    save_model_folder,
)
from medimg import paths
from medimg.tracking import model_registry, runs, store
from medimg.tuning.storage import default_journal

REPO = Path(__file__).resolve().parents[1]
NAME = "medimg-chest_xray"
ENV_LEFT_OUT = (*store.URI_VARIABLES, "MEDIMG_ROOT", "DVC_ROOT", "DVC_EXP_NAME")


def _project(folder: Path) -> Path:
    """A project folder: what makes one (params.yaml and dvc.yaml) and a subfolder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, folder / name)
    (folder / "scans" / "today").mkdir(parents=True)
    return folder


@pytest.fixture
def outside(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No variable that names a root or a store: what a user's shell has."""
    for name in ENV_LEFT_OUT:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_root_is_found_from_any_folder_inside_the_project(tmp_path, outside):
    project = _project(tmp_path / "project")
    for here in (project, project / "scans", project / "scans" / "today"):
        outside.chdir(here)
        assert paths.root() == project
        assert paths.store_root() == project
        assert store.tracking_uri() == f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
        assert default_journal() == project / "optuna" / "journal.log"


def test_a_dvc_folder_alone_marks_a_project_and_medimg_root_wins(tmp_path, outside):
    (tmp_path / "repo" / ".dvc").mkdir(parents=True)
    (tmp_path / "repo" / "src").mkdir()
    outside.chdir(tmp_path / "repo" / "src")
    assert paths.root() == tmp_path / "repo"
    outside.setenv("MEDIMG_ROOT", str(tmp_path))
    assert paths.root() == tmp_path


def test_outside_any_project_the_root_is_the_current_folder(tmp_path, outside):
    outside.chdir(tmp_path)
    assert paths.root() == tmp_path


@pytest.mark.parametrize("copy", [".dvc/tmp/exps/tmpab12cd", ".dvc/tmp/exps/standalone/tmpx"])
def test_an_experiment_copy_uses_the_workspace_stores(tmp_path, outside, copy):
    """`dvc exp run --queue` (exps/<tmp>) and `--temp` (exps/standalone/<tmp>) run in a
    copy that DVC deletes; DVC_ROOT names the workspace the experiment belongs to."""
    workspace = _project(tmp_path / "workspace")
    inside = _project(workspace / copy)
    outside.chdir(inside)
    assert paths.experiment_workspace() is None  # without DVC's variable: a plain folder
    assert paths.store_root() == inside
    outside.setenv("DVC_ROOT", str(workspace))
    outside.setenv("DVC_EXP_NAME", "lr-1")
    assert paths.root() == inside  # outputs stay in the copy, for DVC to collect
    assert paths.models_dir("xray_cnn") == inside / "models" / "xray_cnn"
    assert paths.experiment_workspace() == workspace
    assert store.tracking_uri() == f"sqlite:///{workspace / 'mlruns' / 'mlflow.db'}"
    assert default_journal() == workspace / "optuna" / "journal.log"
    assert runs.experiment_copy_name() == "lr-1"
    outside.chdir(workspace)  # the workspace's own `dvc exp run`: no copy
    assert paths.experiment_workspace() is None
    assert runs.experiment_copy_name() is None


def test_a_relative_sqlite_store_in_the_variable_is_taken_from_the_project(tmp_path, outside):
    project = _project(tmp_path / "project")
    outside.chdir(project / "scans")
    outside.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlruns/other.db")
    assert store.tracking_uri() == f"sqlite:///{project / 'mlruns' / 'other.db'}"
    for uri in ("sqlite:////srv/mlflow.db", "http://127.0.0.1:5000", "sqlite:///:memory:"):
        outside.setenv("MLFLOW_TRACKING_URI", uri)
        assert store.tracking_uri() == uri


def test_runs_are_tagged_with_the_dvc_experiment(tmp_path, outside):
    outside.setenv("MEDIMG_ROOT", str(tmp_path))
    assert "medimg.dvc_experiment" not in runs.run_tags("xray_cnn", "f" * 64, "official")
    outside.setenv("DVC_EXP_NAME", "lr-2")
    outside.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    tags = runs.run_tags("xray_cnn", "f" * 64, "official")
    assert tags["medimg.dvc_experiment"] == "lr-2"
    assert tags["medimg.dvc_baseline"] == "a" * 40


def _logged_model(client: MlflowClient, experiment_id: str) -> tuple[str, str]:
    """(logged model id, run id): a model entity without files (the registry needs no more)."""
    run_id = client.create_run(experiment_id).info.run_id
    model = client.create_logged_model(experiment_id, name="model", source_run_id=run_id)
    client.finalize_logged_model(model.model_id, "READY")
    return model.model_id, run_id


def test_a_model_from_an_experiment_copy_never_becomes_the_champion(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = store.get_or_create_experiment(client, "medimg-chest_xray")

    def register(auc: float, experiment_copy: str | None = None) -> dict:
        model_id, run_id = _logged_model(client, experiment_id)
        return model_registry.register_best(
            client, model_id, run_id, NAME, "xray_cnn", 0, auc, experiment_copy=experiment_copy
        )

    assert register(0.70)["aliases"] == ["champion", "xray_cnn-best"]
    assert register(0.95, "lr-1")["aliases"] == ["xray_cnn-exp-lr-1"]  # better, not applied
    assert register(0.80)["aliases"] == ["champion", "xray_cnn-best"]  # the best candidate
    copied = client.get_model_version_by_alias(NAME, "xray_cnn-exp-lr-1")
    assert copied.tags[model_registry.EXPERIMENT_COPY_TAG] == "lr-1"
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 3


def _open_store(uri: str, start_at: float) -> str:
    """What a train stage does first to the store: check it, then find its experiment."""
    time.sleep(max(0.0, start_at - time.time()))
    try:
        store.ensure_reachable(uri, experiment="medimg-chest_xray")
        store.get_or_create_experiment(MlflowClient(uri), "medimg-chest_xray")
        return ""
    except Exception as err:  # reported by the test
        return f"{type(err).__name__}: {err}"


@pytest.mark.slow
def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    """Without the lock, two processes creating MLflow's tables at once failed ("duplicate
    column name: step": benchmarks/mlflow_sqlite_writers.py)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start_at = time.time() + 6  # every process has imported MLflow by then
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        errors = pool.starmap(_open_store, [(uri, start_at)] * 3)
    assert errors == ["", "", ""]
    assert MlflowClient(uri).get_experiment_by_name("medimg-chest_xray") is not None


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A project whose own store (mlruns/mlflow.db) holds NAME v1, champion."""
    root = _project(tmp_path_factory.mktemp("store") / "project")
    (root / "mlruns").mkdir()
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        model_dir = save_model_folder(root / "xray" / "seed-0", build_model(), BINARY)
        ids = log_and_register(model_dir, NAME, run_name="xray_cnn")
    mlflow.set_tracking_uri(None)  # log_and_register made it this process's store
    Image.fromarray(gradient_image(60, 50)).save(root / "scans" / "today" / "scan.png")
    env = {k: v for k, v in os.environ.items() if k not in ENV_LEFT_OUT}
    return {"root": root, "uri": uri, "env": env, "model_dir": model_dir, **ids}


def _databases(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*.db"))


def _run_predict(project: dict, spec: str, target: str, cwd: Path) -> subprocess.CompletedProcess:
    """`medimg predict --model spec --format json target` in a process of its own at `cwd`."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "medimg.cli",
            "predict",
            "--model",
            spec,
            "--format",
            "json",
            target,
        ],
        cwd=cwd,
        env=project["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _predict(project: dict, spec: str, cwd: Path) -> dict:
    image = project["root"] / "scans" / "today" / "scan.png"
    done = _run_predict(project, spec, os.path.relpath(image, cwd), cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)["results"][0]["probabilities"]


@pytest.mark.slow
@pytest.mark.parametrize("where", [".", "scans/today"])
def test_predict_finds_the_project_store_without_the_variable(project, where):
    cwd = project["root"] / where
    local = _predict(project, str(project["model_dir"]), cwd)
    for spec in (f"models:/{NAME}@champion", f"runs:/{project['run_id']}/model"):
        assert _predict(project, spec, cwd) == pytest.approx(local, abs=1e-7)
    assert _databases(project["root"]) == ["mlruns/mlflow.db"]


@pytest.mark.slow
def test_predict_outside_the_project_names_the_store_it_looked_for(project, tmp_path):
    done = _run_predict(
        project, f"models:/{NAME}@champion", str(project["root"] / "scans"), tmp_path
    )
    assert done.returncode == 2
    assert f"no database at {tmp_path / 'mlruns' / 'mlflow.db'}" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no store made


TRANSFER = """
import sys
from pathlib import Path
from medimg.config.runs import RunConfig
from medimg.training.train_stage import resolve_initial_weights
run = RunConfig(dataset="d", split_protocol="pooled", model="alexnet", epochs=1, batch_size=2,
                model_options={"width": 0.05, "weights": sys.argv[1]})
print(resolve_initial_weights(run, Path(sys.argv[2])).model_options["weights"])
"""


@pytest.mark.slow
def test_transfer_weights_from_the_registry_resolve_from_a_subfolder(project, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", TRANSFER, f"models:/{NAME}@champion", str(tmp_path / "download")],
        cwd=project["root"] / "scans",
        env=project["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    folder = Path(done.stdout.strip().splitlines()[-1])
    expected = (project["model_dir"] / "model.keras").read_bytes()
    assert (folder / "model.keras").read_bytes() == expected
    assert _databases(project["root"]) == ["mlruns/mlflow.db"]
