"""The registered model served over HTTP by `medimg serve` (MLflow's scoring server), for real.

A tiny model is logged with `log_classifier_model` and registered in the sqlite store of
a temporary project (mlruns/mlflow.db); `medimg serve` runs as a subprocess from a
folder inside the project, without MLFLOW_TRACKING_URI, on a free 127.0.0.1 port; an
image is POSTed to /invocations as base64, and the answer must equal `medimg predict`'s
on the same file. Takes about half a minute (the server imports TensorFlow).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from inference_support import (
    BINARY,
    build_model,
    gradient_image,
    log_and_register,
    save_model_folder,
)
from medimg.cli import main
from medimg.inference.pyfunc import KerasImageClassifier
from medimg.tracking.store import URI_VARIABLES

pytestmark = pytest.mark.slow  # each test trains, or runs a server

REPO = Path(__file__).resolve().parents[1]
NAME = "medimg-served"
STARTUP_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("serving")
    for name in ("params.yaml", "dvc.yaml"):  # what makes the folder a project
        shutil.copy(REPO / name, root / name)
    (root / "mlruns").mkdir()
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        log_and_register(save_model_folder(root / "seed-0", build_model(), BINARY), NAME)
    port = _free_port()
    model_uri = f"models:/{NAME}@champion"
    inside = root / "scans"
    inside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (*URI_VARIABLES, "MEDIMG_ROOT")}
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "medimg.cli", "serve", "--model", model_uri, "--port", str(port)],
        cwd=inside,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the workers stop with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(url, server, root / "server.log")
        yield {"url": url, "uri": uri, "model_uri": model_uri, "root": root}
    finally:
        _stop(server)
        log.close()


def test_the_server_used_the_project_store_and_made_no_other(served):
    databases = sorted(path.relative_to(served["root"]) for path in served["root"].rglob("*.db"))
    assert databases == [Path("mlruns/mlflow.db")]
    assert f"from MLflow store {served['uri']}" in (served["root"] / "server.log").read_text()


def test_serve_refuses_a_model_folder_in_one_line(tmp_path):
    folder = save_model_folder(tmp_path / "seed-0", build_model(), BINARY)
    done = subprocess.run(
        [sys.executable, "-m", "medimg.cli", "serve", "--model", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().endswith("or medimg predict")
    assert "medimg serve serves MLflow models" in done.stderr


def _stop(server: subprocess.Popen) -> None:
    """Stop the server and its workers (its process group), forcibly after 30 s."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _wait_until_ready(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"medimg serve exited ({server.returncode}):\n{log.read_text()}")
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    pytest.fail(f"medimg serve not ready after {STARTUP_TIMEOUT_S} s:\n{log.read_text()}")


def _invoke(url: str, files: list[bytes]) -> requests.Response:
    rows = [[base64.b64encode(data).decode("ascii")] for data in files]
    payload = {"dataframe_split": {"columns": ["image"], "data": rows}}
    return requests.post(f"{url}/invocations", json=payload, timeout=60)


def test_served_model_answers_like_medimg_predict(served, tmp_path, capsys, monkeypatch):
    images = [tmp_path / "scan.png", tmp_path / "export.png"]
    Image.fromarray(gradient_image(90, 70)).save(images[0])
    Image.fromarray(gradient_image(64, 64).astype(np.uint16) * 200).save(images[1])  # 16-bit

    response = _invoke(served["url"], [path.read_bytes() for path in images])

    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", served["uri"])
    code = main(
        [
            "--params",
            str(REPO / "params.yaml"),
            "predict",
            "--model",
            served["model_uri"],
            "--format",
            "json",
            *map(str, images),
        ]
    )
    assert code == 0
    local = json.loads(capsys.readouterr().out)["results"]
    for served_row, local_row in zip(predictions, local, strict=True):
        assert served_row["predicted_class"] == local_row["predicted_class"]
        assert served_row["probability"] == pytest.approx(local_row["probability"], abs=1e-6)
        for label, probability in local_row["probabilities"].items():
            assert served_row[f"probability_{label}"] == pytest.approx(probability, abs=1e-6)


def test_an_unusable_image_is_a_400_naming_its_row(served):
    good = gradient_image().tobytes()  # raw pixels, not an image file
    response = _invoke(served["url"], [good])
    assert response.status_code == 400
    assert "row 0: cannot read the image" in response.json()["message"]


def test_the_wrapper_refuses_a_request_without_the_image_column():
    import pandas as pd
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=r"expected a column 'image'"):
        KerasImageClassifier().predict(None, pd.DataFrame({"pixels": ["x"]}))


def test_the_logged_signature_and_example_match_the_models_answer(served, monkeypatch):
    """The signature's output side is made without the model: it must still be its layout."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", served["uri"])
    info = mlflow.models.get_model_info(served["model_uri"])
    assert info.signature.inputs.input_names() == ["image"]
    expected = ["predicted_class", "probability", *(f"probability_{c}" for c in BINARY)]
    assert info.signature.outputs.input_names() == expected
    model = mlflow.pyfunc.load_model(served["model_uri"])
    answer = model.predict(model.input_example)
    assert list(answer.columns) == expected
    assert len(answer) == len(model.input_example) == 2
    probabilities = answer[[f"probability_{c}" for c in BINARY]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
