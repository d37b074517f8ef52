"""Model sources: local folders, runs:/ and models:/ URIs from a real sqlite MLflow store.

The model is logged with `log_classifier_model` and registered with
`model_registry.register_best`, as the train stage does; `medimg predict` then takes the
registry URI and must give the same probabilities as the local folder.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from inference_support import (
    BINARY,
    build_model,
    gradient_image,
    log_and_register,
    save_model_folder,
)
from medimg.cli import main
from medimg.inference.errors import ModelSourceError
from medimg.inference.sources import resolve_model_source
from medimg.tracking import store as tracking_store

REPO = Path(__file__).resolve().parents[1]
NAME = "medimg-tiny"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A sqlite store holding NAME v1 (champion) and a Keras-flavour model without
    preprocessing.json (how models were logged before)."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        model_dir = save_model_folder(root / "seed-0", build_model(), BINARY)
        ids = log_and_register(model_dir, NAME)
        with mlflow.start_run(
            experiment_id=tracking_store.get_or_create_experiment(mlflow.MlflowClient(uri), "older")
        ) as older:
            mlflow.keras.log_model(build_model(), name="model")  # no preprocessing.json
    return {"uri": uri, "model_dir": model_dir, "older_run": older.info.run_id, **ids}


@pytest.fixture
def use_store(store: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    return store


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [f"models:/{NAME}@champion", f"models:/{NAME}/1", "runs:/{run_id}/model", "models:/{model_id}"],
)
def test_mlflow_uris_resolve_to_the_logged_files(use_store, tmp_path, spec):
    folder = resolve_model_source(spec.format(**use_store), download_dir=tmp_path)
    assert folder.is_relative_to(tmp_path)
    assert (folder / "model.keras").read_bytes() == (
        use_store["model_dir"] / "model.keras"
    ).read_bytes()
    logged = json.loads((folder / "preprocessing.json").read_text())
    assert logged == json.loads((use_store["model_dir"] / "preprocessing.json").read_text())


def test_predict_with_the_champion_gives_the_local_answer(use_store, tmp_path, capsys):
    image = tmp_path / "scan.png"
    Image.fromarray(gradient_image(60, 50)).save(image)
    answers = []
    for model in (f"models:/{NAME}@champion", use_store["model_dir"]):
        code = main(
            [
                "--params",
                str(REPO / "params.yaml"),
                "predict",
                "--model",
                str(model),
                "--format",
                "json",
                str(image),
            ]
        )
        assert code == 0
        answers.append(json.loads(capsys.readouterr().out)["results"][0]["probabilities"])
    assert answers[0] == pytest.approx(answers[1], abs=1e-7)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            f"models:/{NAME}@champ",
            r"Registered model alias champ not found .*; aliases of medimg-tiny: champion, "
            r"tiny-best$",
        ),
        ("models:/medimg-other@champion", r"Registered Model with name=medimg-other not found"),
        (f"models:/{NAME}/7", r"Model Version \(name=medimg-tiny, version=7\) not found"),
        ("runs:/0123456789abcdef0123456789abcdef/model", r"Run with id=0123456789abcdef0123"),
        ("runs:/{older_run}/model", r"model.keras has no preprocessing.json beside it"),
        ("runs:/{run_id}/nothing", r"Failed to download artifacts from path 'nothing'"),
    ],
)
def test_unusable_mlflow_uris_are_one_line_errors(use_store, tmp_path, spec, message):
    spec = spec.format(**use_store)
    with pytest.raises(ModelSourceError, match=message) as raised:
        resolve_model_source(spec, download_dir=tmp_path)
    assert str(raised.value).startswith(f"model {spec}: ")
    assert "\n" not in str(raised.value)


def test_a_store_that_does_not_exist_is_not_created(tmp_path, monkeypatch):
    database = tmp_path / "elsewhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    with pytest.raises(ModelSourceError, match=r"MLflow store sqlite:///.*: no database at"):
        resolve_model_source(f"models:/{NAME}@champion", download_dir=tmp_path)
    assert not database.parent.exists()


def test_an_unreachable_server_fails_in_seconds(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelSourceError, match=rf"127.0.0.1:{port} is not reachable"):
        resolve_model_source(f"models:/{NAME}@champion", download_dir=tmp_path)


def test_local_sources(store, tmp_path):
    model_dir = store["model_dir"]
    assert resolve_model_source(str(model_dir)) == model_dir
    assert resolve_model_source(str(model_dir / "model.keras")) == model_dir
    with pytest.raises(ModelSourceError, match=r"nope: missing \(no such file or folder\)"):
        resolve_model_source(str(tmp_path / "nope"))
    other = tmp_path / "best.keras"
    other.write_bytes(b"")
    with pytest.raises(ModelSourceError, match=r"expected a folder holding model.keras"):
        resolve_model_source(str(other))
    # models/<run> holds one folder per seed: no guessing which.
    with pytest.raises(ModelSourceError, match=r"model.keras: not found"):
        resolve_model_source(str(model_dir.parent))
    assert os.listdir(tmp_path) == ["best.keras"]
