"""`medimg serve`: MLflow's scoring server for a model of the project's store.

`mlflow models serve -m models:/...` resolves the URI against MLFLOW_TRACKING_URI or,
without it, against sqlite:///mlflow.db in the current directory, which it creates and
finds empty. medimg checks the model in the project's store first, with `medimg
predict`'s resolver and one-line errors, then becomes MLflow's server (exec: signals
and the exit status are the server's) with that store in its environment.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from medimg.inference.errors import ModelSourceError
from medimg.inference.sources import MLFLOW_SCHEMES, resolve_model_source


def server_command(spec: str, host: str, port: int, workers: int) -> list[str]:
    """`mlflow models serve` for `spec` in this interpreter, medimg's pyfunc loaded from it
    (--env-manager local: the served model imports medimg)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        spec,
        "--env-manager",
        "local",
        "-h",
        host,
        "-p",
        str(port),
        "--workers",
        str(workers),
    ]


def serve(spec: str, host: str, port: int, workers: int) -> NoReturn:
    """Check that `spec` is a usable model of the project's store, then exec the server."""
    from medimg.tracking.store import URI_VARIABLES, tracking_uri

    if not spec.startswith(MLFLOW_SCHEMES):
        raise ModelSourceError(
            f"model {spec}: medimg serve serves MLflow models ({' or '.join(MLFLOW_SCHEMES)}"
            "...); for a models/<run>/seed-<k> folder use its registered version "
            "(models:/medimg-<dataset>@<run>-best) or medimg predict"
        )
    with tempfile.TemporaryDirectory(prefix="medimg-serve-check-") as folder:
        resolve_model_source(spec, download_dir=Path(folder))
    uri = tracking_uri()
    # The server starts `uvicorn` by name: this interpreter's bin folder first on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, **dict.fromkeys(URI_VARIABLES, uri), "PATH": path}
    print(f"medimg serve: {spec} from MLflow store {uri}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execve(sys.executable, server_command(spec, host, port, workers), env)
