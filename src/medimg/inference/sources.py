"""Where a model comes from: a local folder, or a run or registered model in MLflow.

`resolve_model_source` turns any of them into a local folder holding model.keras and
preprocessing.json. MLflow URIs are downloaded with MLflow's own
`mlflow.artifacts.download_artifacts` from the project's store (`tracking_uri()`: the
project found from any folder inside it, or MLFLOW_TRACKING_URI), so every URI form
MLflow knows works, with MLflow's own credentials and retries. That store is made
MLflow's process-wide one first: MLflow resolves models:/ and runs:/ against it, not
against the store a call names.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from medimg.inference.classifier import MODEL_FILE, PREPROCESSING_FILE, model_files
from medimg.inference.errors import ModelSourceError

MLFLOW_SCHEMES = ("runs:/", "models:/")
# Where a logged model keeps its files: the medimg pyfunc's artifacts, the Keras flavour's data.
_LOGGED_MODEL_FOLDERS = ("artifacts", "data")
_MODEL_ALIAS = re.compile(r"models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?$")


def resolve_model_source(spec: str, download_dir: Path | None = None) -> Path:
    """A local folder holding model.keras + preprocessing.json for the model `spec`.

    spec: a model folder (models/<run>/seed-<k>), its model.keras, `runs:/<run_id>/<path>`,
        `models:/<name>@<alias>`, `models:/<name>/<version>` or `models:/<model_id>`.
    download_dir: where MLflow models are downloaded to (a new temporary folder when None;
        the caller removes it). Not used for a local folder, which is returned as is.

    Raises ModelSourceError, one line naming the spec: a path that does not exist, an
    unknown run, model, version or alias, a logged model without model.keras or
    preprocessing.json, a store that cannot be reached.
    """
    if spec.startswith(MLFLOW_SCHEMES):
        folder = Path(download_dir) if download_dir else Path(tempfile.mkdtemp(prefix="medimg-"))
        return _model_folder_in(_download(spec, folder), spec)
    path = Path(spec)
    if not path.exists():
        raise ModelSourceError(
            f"model {spec}: missing (no such file or folder); expected a models/<run>/seed-<k> "
            f"folder, its {MODEL_FILE}, or an MLflow URI ({' or '.join(MLFLOW_SCHEMES)}...)"
        )
    if path.is_file():
        if path.name != MODEL_FILE:
            raise ModelSourceError(
                f"model {spec}: expected a folder holding {MODEL_FILE} and "
                f"{PREPROCESSING_FILE}, or that {MODEL_FILE} itself"
            )
        path = path.parent
    model_files(path)  # both files are there, or ModelSourceError names the missing one
    return path


def _download(spec: str, destination: Path) -> Path:
    """Download MLflow artifacts `spec` into `destination`; one-line errors."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from medimg.tracking.store import current_store, tracking_uri

    uri = tracking_uri()
    _check_store(uri, spec)
    try:
        with current_store(uri):
            return Path(
                mlflow.artifacts.download_artifacts(artifact_uri=spec, dst_path=str(destination))
            )
    except MlflowException as err:
        reason = err.message.strip().splitlines()[0].rstrip(".")
        raise ModelSourceError(
            f"model {spec}: {reason} (MLflow store {uri}){_alias_hint(spec, uri)}"
        ) from None


def _check_store(uri: str, spec: str) -> None:
    """Fail in seconds, naming the store, when it cannot be read (MLflow would retry for
    minutes, or create an empty sqlite database where none was meant to be)."""
    from medimg.tracking.store import TrackingError, ensure_reachable, require_existing_store

    try:
        require_existing_store(
            uri,
            "run medimg inside the project that holds the model, "
            "or set MLFLOW_TRACKING_URI to its store",
        )
        if urlparse(uri).scheme == "sqlite":
            return
        ensure_reachable(uri)
    except TrackingError as err:
        raise ModelSourceError(f"model {spec}: {err}") from None


def _alias_hint(spec: str, uri: str) -> str:
    """For an unknown alias: the aliases the registered model does have."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    match = _MODEL_ALIAS.match(spec)
    if match is None:
        return ""
    try:
        aliases = MlflowClient(uri).get_registered_model(match["name"]).aliases
    except MlflowException:
        return ""  # the model itself is unknown: MLflow's message says so
    if match["alias"] in aliases:
        return ""
    return f"; aliases of {match['name']}: {', '.join(sorted(aliases)) or 'none'}"


def _model_folder_in(folder: Path, spec: str) -> Path:
    """The folder of a downloaded MLflow model that holds model.keras and preprocessing.json:
    the download itself (a run's plain artifacts), or where the logged model's flavour keeps
    its files (artifacts/ of the medimg pyfunc, data/ of the Keras flavour). Not a search:
    a folder of several models (one per seed) must not become a guess at one of them."""
    places = [folder, *(folder / sub for sub in _LOGGED_MODEL_FOLDERS)]
    with_model = [place for place in places if (place / MODEL_FILE).is_file()]
    for place in with_model:
        if (place / PREPROCESSING_FILE).is_file():
            return place
    if with_model:
        raise ModelSourceError(
            f"model {spec}: {with_model[0] / MODEL_FILE} has no {PREPROCESSING_FILE} beside "
            "it (a model logged before medimg logged its preprocessing: use the "
            "models/<run>/seed-<k> folder, or log it with log_classifier_model)"
        )
    found = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
    raise ModelSourceError(f"model {spec}: holds no {MODEL_FILE} (found: {found})")
