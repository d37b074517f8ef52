"""The MLflow store: which one, whether it can be used, and the experiments in it.

`MLFLOW_TRACKING_URI` when set, else the project's sqlite store (mlruns/mlflow.db under
medimg.paths.store_root(): the project found from any folder inside it, and the
workspace for an experiment DVC runs in a temporary copy); checked before any work, so
that a bad store costs seconds, not a training.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlparse, urlsplit, urlunsplit
from urllib.request import url2pathname

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from medimg import paths
from medimg.errors import UserError

# An experiment's kind, as MLflow records it: this value is "Machine learning" (runs,
# metrics, models), the other "GenAI apps & agents". MLflow 3.17's UI no longer reads it
# to choose the pages (its GenAI / Model training switch does: ML_WORKFLOW), but the API
# and other UI versions do; the values are in the UI bundle (mlflow/server/js/build).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MACHINE_LEARNING_KIND = "custom_model_development"
# A named view of an experiment's runs table (columns, sort, filter) saved in the
# experiment, as the UI's "Save view" does: the UI lists it under "Views", and
# `#/experiments/<id>/runs?viewStateShareKey=<key>` opens it. Its tag holds an envelope
# {"name", "createdAt", "updatedAt" (ms), "state": the view's state as a JSON string}
# (MLflow 3.17's UI bundle, mlflow/server/js/build: the saved-views module).
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
# MLflow 3.17's UI shows every experiment in its "GenAI" mode (Overview, traces) until
# the browser switches to "Model training" (remembered in its local storage), whatever
# the experiment's kind tag says; this query parameter opens a page in that mode.
ML_WORKFLOW = "workflowType=machine_learning"
# What MLflow reads, and sets for its subprocesses, as its process-wide stores.
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


class TrackingError(UserError, RuntimeError):
    """The MLflow store cannot be used (unreachable, unwritable, deleted experiment)."""


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else sqlite:///<store root>/mlruns/mlflow.db.

    MLflow 3 refuses the plain file store, hence sqlite; artifacts go under mlruns/.
    A relative sqlite path in the variable (sqlite:///mlruns/mlflow.db) is taken from
    the project's store root, not from the current directory: DVC runs a queued
    experiment's stages in a temporary copy, where it would name a throwaway store.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if not env:
        return f"sqlite:///{paths.mlruns_dir() / 'mlflow.db'}"
    database = _sqlite_path(env)
    if database is None or database.is_absolute():
        return env
    return f"sqlite:///{paths.store_root() / database}"


@contextmanager
def current_store(uri: str) -> Iterator[None]:
    """Make `uri` MLflow's process-wide tracking and registry store while the block runs.

    MLflow resolves models:/ and runs:/ URIs (download_artifacts, model loading, the
    registry behind a run's logged model) against its process-wide URIs, even when the
    call names a store (seen with MLflow 3.17); their default is sqlite:///mlflow.db in
    the current directory, which MLflow would create and search instead. Afterwards
    MLflow resolves its store as before: from the variables, restored.
    """
    saved = {name: os.environ.get(name) for name in URI_VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)  # also unsets MLFLOW_TRACKING_URI ...
        mlflow.set_registry_uri(None)
        for name, value in saved.items():  # ... restored here, as the registry's
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for an in-memory database or a URI
    of another kind)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    return None if path in ("", ":memory:") else Path(path)


def require_existing_store(uri: str, hint: str) -> None:
    """A TrackingError when `uri` is a sqlite store whose database file does not exist.

    For readers of runs (the report, model sources): opening a missing sqlite store
    would create an empty database and find nothing, hiding a wrong store. `hint` says
    what to do instead.
    """
    if urlparse(uri).scheme != "sqlite":
        return
    database = _sqlite_path(uri)
    if database is not None and not database.is_file():
        raise TrackingError(f"MLflow store {uri}: no database at {database}; {hint}")


def masked_uri(uri: str) -> str:
    """`uri` with its password, if any, shown as *** (for messages and logs)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def shareable_uri(uri: str) -> str:
    """`uri` as a shared document names it: masked, and a sqlite database inside the
    project given relative to it (sqlite:///mlruns/mlflow.db), so that a committed
    report names no one's home folder."""
    database = _sqlite_path(uri)
    if database is not None and database.is_absolute():
        try:
            return f"sqlite:///{database.resolve().relative_to(paths.store_root().resolve())}"
        except ValueError:  # outside the project: its own path is the only name it has
            pass
    return masked_uri(uri)


def one_line(text: object) -> str:
    """`text` with every run of whitespace (newlines too) made one space."""
    return " ".join(str(text).split())


def ensure_reachable(
    uri: str | None = None, timeout_s: float = 10, experiment: str | None = None
) -> None:
    """Fail fast, with one line naming the store (password masked), when it cannot be used.

    Checked before any training, so that a bad store costs seconds, not a training:
    - http(s): one GET of the server's /health (MLflow's client retries for minutes);
    - sqlite: the database's folder exists (only the project's mlruns/ is created:
      MLflow would silently create any other, even at the filesystem root), it and
      an existing database file are writable, and so is the local artifact folder
      of `experiment` (or, without one, the store's artifacts/ folder); then the
      database is opened (its tables created when new), one process at a time;
    - postgresql: a connection within `timeout_s` (MLflow's engine retries for
      about 100 s), then one query through MlflowClient, as for any other store.
    """
    uri = uri or tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        _check_server(uri, timeout_s)
        return
    if scheme == "sqlite":
        _check_sqlite_store(uri)
        ensure_artifacts_writable(artifact_location(experiment or "", uri), uri)
        _open_first_alone(uri)
        return
    if scheme.split("+")[0] in ("postgresql", "postgres"):
        _check_postgresql(uri, timeout_s)
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # any failure means the store is unusable; say which
        raise TrackingError(
            f"MLflow store {masked_uri(uri)} is not usable: {one_line(err)}"
        ) from None


def _check_server(uri: str, timeout_s: float) -> None:
    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException as err:
        raise TrackingError(
            f"MLflow tracking server {masked_uri(uri)} is not reachable "
            f"({type(err).__name__}: {one_line(err)}); "
            "start the server or point MLFLOW_TRACKING_URI at a running one"
        ) from None


def _check_sqlite_store(uri: str) -> None:
    db = _sqlite_path(uri)
    if db is None:
        return
    folder = db.parent
    if not folder.exists() and folder.resolve() == paths.mlruns_dir():
        try:
            # exist_ok: parallel workers (tune, team) may create it at the same moment.
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingError(
                f"MLflow store {uri}: cannot create the folder {folder} ({err.strerror})"
            ) from None
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise TrackingError(
            f"MLflow store {uri}: the folder {folder} {what}; create it "
            "or point MLFLOW_TRACKING_URI at a database in an existing folder"
        )
    _check_writable_folder(folder, f"MLflow store {uri}")
    if db.is_file():
        try:
            db.open("r+b").close()
        except OSError as err:
            raise TrackingError(
                f"MLflow store {uri}: the database file {db} is not writable ({err.strerror}); "
                "make it writable or point MLFLOW_TRACKING_URI at another store"
            ) from None


def _open_first_alone(uri: str) -> None:
    """Open the sqlite store at `uri` while no other medimg process does.

    MLflow creates a new database's tables (and migrates an older one) when a process
    first opens it; two processes doing that at once fail ("duplicate column name: step",
    or alembic's "Online migration expected to match one row": two queued DVC
    experiments on a store that did not exist yet; benchmarks/mlflow_sqlite_writers.py).
    Afterwards writers share the database safely. Called by ensure_reachable, which
    every writer runs before it makes an MlflowClient (that opens the store at once).
    A blocking lock (fcntl, Linux and macOS), unlike medimg.training.run_lock's, which
    refuses a second holder; the kernel releases it however the process ends.
    """
    database = _sqlite_path(uri)
    if database is None:
        return
    with database.with_name(f".{database.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as err:  # a corrupt or foreign database: say which, in one line
            raise TrackingError(f"MLflow store {uri} cannot be opened: {one_line(err)}") from None


def _check_writable_folder(folder: Path, what: str) -> None:
    """A TrackingError unless a file can really be created in `folder`.

    A real file, as MLflow will write one: whatever refuses it (permission bits,
    an immutable flag, a read-only mount, a network filesystem squashing root)
    refuses the check too.
    """
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".medimg-write-check-"):
            pass
    except OSError as err:
        raise TrackingError(
            f"{what}: the folder {folder} is not writable ({err.strerror}); "
            "make it writable or point MLFLOW_TRACKING_URI at another store"
        ) from None


def ensure_artifacts_writable(location: str | None, uri: str | None = None) -> None:
    """A TrackingError when the local artifact folder `location` (a file: URI) cannot be written.

    The folder is created on the first logged artifact, so a missing one is fine
    when its nearest existing parent is writable. Remote locations (a tracking
    server's mlflow-artifacts:, s3:) are the server's or the bucket's concern.
    """
    if location is None or urlparse(location).scheme not in ("file", ""):
        return
    folder = Path(url2pathname(urlparse(location).path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    what = f"MLflow store {masked_uri(uri or tracking_uri())}, artifacts {location}"
    if not folder.is_dir():
        raise TrackingError(f"{what}: {folder} is not a folder; remove it or choose another store")
    _check_writable_folder(folder, what)


def _check_postgresql(uri: str, timeout_s: float) -> None:
    """Connect once with a short timeout: an unreachable server fails in seconds."""
    import psycopg  # only for postgresql:// stores
    from sqlalchemy.engine import make_url

    try:
        # libpq reads the URL itself, less SQLAlchemy's "+driver" suffix.
        conninfo = make_url(uri).set(drivername="postgresql").render_as_string(False)
        psycopg.connect(conninfo, connect_timeout=max(2, round(timeout_s))).close()
    except Exception as err:  # psycopg.Error, or a URL that does not parse
        raise TrackingError(
            f"MLflow store {masked_uri(uri)}: cannot connect to PostgreSQL ({one_line(err)}); "
            "start the server or fix MLFLOW_TRACKING_URI"
        ) from None


def experiment_name(prefix: str, dataset: str) -> str:
    """One experiment per dataset, so runs on different data never share a table."""
    return f"{prefix}-{dataset}"


def artifact_location(name: str, uri: str | None = None) -> str | None:
    """Where a new experiment's artifacts go: <db folder>/artifacts/<name> for a sqlite store.

    For the default store this is mlruns/artifacts/<name>. For a tracking server
    it is None: the server decides (it may proxy artifacts to object storage).
    """
    uri = uri or tracking_uri()
    if urlparse(uri).scheme != "sqlite":
        return None
    db = _sqlite_path(uri)
    folder = (db.parent if db else paths.mlruns_dir()).resolve() / "artifacts"
    return f"{folder.as_uri()}/{quote(name)}"


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created (with `artifact_location`) when missing.

    The experiment is of MLflow's "machine learning" kind (EXPERIMENT_KIND_TAG). An
    experiment made before, without the tag, gets it; one whose kind someone chose is
    left as it is.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=artifact_location(name, client.tracking_uri),
                tags={EXPERIMENT_KIND_TAG: MACHINE_LEARNING_KIND},
            )
        except MlflowException:
            # Another worker may have created it between our lookup and create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} in {client.tracking_uri} is deleted; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
            "or delete it permanently (mlflow gc)"
        )
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, MACHINE_LEARNING_KIND
        )
    return experiment.experiment_id


def save_shared_view(
    client: MlflowClient, experiment_id: str, key: str, name: str, state: dict
) -> None:
    """Save `state` (the UI's view state: e.g. {"selectedColumns": ["metrics.`acc`"]}) as
    the experiment's view `name` under `key`; shared_view_link opens it. An unchanged
    view is not written again (every evaluate stage saves it)."""
    tag = SHARED_VIEW_TAG_PREFIX + key
    state_text = json.dumps(state, separators=(",", ":"))
    now = int(time.time() * 1000)
    try:
        current = json.loads(client.get_experiment(experiment_id).tags.get(tag, "{}"))
    except json.JSONDecodeError:  # an older, plain view: replaced
        current = {}
    if current.get("name") == name and current.get("state") == state_text:
        return
    envelope = {
        "name": name,
        "createdAt": current.get("createdAt", now),
        "updatedAt": now,
        "state": state_text,
    }
    client.set_experiment_tag(experiment_id, tag, json.dumps(envelope, separators=(",", ":")))


def shared_view_link(ui_url: str, experiment_id: str, key: str) -> str:
    """The address in the MLflow UI at `ui_url` of experiment `experiment_id`'s runs table
    as its saved view `key` shows it, in the UI's "Model training" mode (ML_WORKFLOW)."""
    runs = f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
    return f"{runs}?viewStateShareKey={key}&{ML_WORKFLOW}"
