"""MLflow tracking: the store, experiments, parent/child runs, callbacks, registry.

Tracking is a side concern: training code receives callbacks from here and
never calls MLflow itself.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import re
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse, urlsplit, urlunsplit
from urllib.request import url2pathname

import mlflow
import mlflow.tracking.fluent as mlflow_fluent
import requests
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.environment_variables import MLFLOW_RUN_ID
from mlflow.exceptions import MlflowException

import medimg
from medimg import atomic, paths
from medimg.errors import UserError

log = logging.getLogger(__name__)

# MLflow's local store accepts 6,000 characters, but older servers and Databricks
# reject param values over 500; staying under the lower limit keeps runs portable.
MAX_PARAM_VALUE_LENGTH = 500
# Version tag written by `register_best`; the champion alias is chosen by it.
VAL_AUC_TAG = "medimg.best_val_auc"


class TrackingError(UserError, RuntimeError):
    """The MLflow store cannot be used (unreachable, unwritable, deleted experiment)."""


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else the project store sqlite:///<root>/mlruns/mlflow.db.

    MLflow 3 refuses the plain file store, hence sqlite; artifacts go under mlruns/.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{paths.mlruns_dir() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for an in-memory database)."""
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
      of `experiment` (or, without one, the store's artifacts/ folder);
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
    """The id of experiment `name`, created (with `artifact_location`) when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location(name, client.tracking_uri)
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
    return experiment.experiment_id


def flatten_params(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {"a.b.c": "value"}, each value at most MAX_PARAM_VALUE_LENGTH chars.

    Strings stay as they are; everything else is written as JSON (lists, tuples,
    booleans, None), so "[1.0, 1.2]" and "null" read back unambiguously. An
    over-long value is cut and ends in "...".
    """
    flat: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > MAX_PARAM_VALUE_LENGTH:
            text = text[: MAX_PARAM_VALUE_LENGTH - 3] + "..."
        flat[name] = text
    return flat


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(paths.root()), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_commit() -> str:
    """The repository's HEAD commit, "unknown" outside a repository."""
    return _git("rev-parse", "HEAD") or "unknown"


def package_versions() -> dict[str, str]:
    """{distribution: version} of the packages a run depends on, those installed."""
    versions = {}
    # importlib.metadata reads versions without importing (and initialising) the packages.
    for distribution in ("keras", "mlflow", "numpy", "tensorflow", "tensorflow-cpu", "jax"):
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def keras_backend() -> str:
    """The Keras backend's name, read without importing Keras (and its backend)."""
    from keras.src.backend.config import backend  # a plain module: no TensorFlow import

    return backend()


def _device_name() -> str:
    # Keras (and TensorFlow or JAX) are imported only here: the report and other
    # commands that read the store do not pay seconds for them.
    from medimg.device import device_name

    return device_name()


def run_tags(
    run_name: str,
    dataset_fingerprint: str,
    split_protocol: str,
    seed: int | None = None,
) -> dict[str, str]:
    """Tags that say which code, data, software and hardware produced a run.

    The git commit is "unknown" outside a repository (or before its first commit).
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    tags = {
        "medimg.run": run_name,
        "medimg.version": medimg.__version__,
        "medimg.git_commit": commit or "unknown",
        "medimg.git_dirty": "unknown" if status is None else str(bool(status)).lower(),
        "medimg.dataset_fingerprint": dataset_fingerprint,
        "medimg.split_protocol": split_protocol,
        "medimg.keras_backend": keras_backend(),
        "medimg.device": _device_name(),
    }
    tags.update({f"medimg.versions.{k}": v for k, v in package_versions().items()})
    if seed is not None:
        tags["medimg.seed"] = str(seed)
    return tags


PROCESS_TAGS = ("medimg.host", "medimg.pid", "medimg.process_start")


def _process_start(pid: int) -> str:
    """The start time of process `pid` (clock ticks after boot; Linux), "" when unknown.

    With the pid it identifies a process: a pid alone is reused after the process dies.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22 counts from 1; the command name (field 2) may hold spaces, so split after it.
    return stat.rsplit(")", 1)[1].split()[19]


def process_tags() -> dict[str, str]:
    """Tags naming the process that writes a run, so a run left RUNNING by a dead one is found."""
    pid = os.getpid()
    return {
        "medimg.host": socket.gethostname(),
        "medimg.pid": str(pid),
        "medimg.process_start": _process_start(pid),
    }


def _process_alive(pid: int, start: str) -> bool:
    if start and Path("/proc").is_dir():
        return _process_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def close_orphaned_runs(client: MlflowClient, experiment_ids: list[str]) -> list[str]:
    """Mark KILLED the runs left RUNNING by a medimg process of this host that has died.

    A killed training cannot end its own MLflow run; neither can one whose stage
    DVC later restored from its run cache. Runs of other hosts, of live processes
    and without medimg's process tags are left alone: on a shared tracking server
    they may be someone else's live training. Returns the ids closed.
    """
    host = socket.gethostname()
    closed = []
    for run in client.search_runs(
        experiment_ids,
        filter_string=f"attributes.status = 'RUNNING' and tags.`medimg.host` = '{host}'",
        max_results=1000,
    ):
        tags = run.data.tags
        if not tags.get("medimg.pid", "").isdigit():
            continue
        if not _process_alive(int(tags["medimg.pid"]), tags.get("medimg.process_start", "")):
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    return closed


@contextmanager
def resumable_run(
    id_file: Path,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str],
    nested: bool = False,
) -> Iterator[Run]:
    """Start (or, when `id_file` holds a run id, resume) an active MLflow run.

    The id is written as soon as the run exists, so an interrupted training
    continues the same run (its metric steps included) instead of starting a new one.
    A run that raises ends FAILED (KILLED on Ctrl-C); resuming sets it RUNNING again.
    When the store itself failed (TrackingError), the run is left RUNNING rather than
    ended: ending it would retry against the dead server for minutes. The re-run
    resumes it, or close_orphaned_runs closes it once this process is gone.
    """
    if id_file.is_file():
        run = mlflow.start_run(run_id=id_file.read_text().strip(), nested=nested)
        mlflow.set_tags(dict(tags))
    else:
        run = mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, tags=dict(tags), nested=nested
        )
        id_file.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_file(id_file, run.info.run_id)
    try:
        yield run
    except TrackingError:
        _forget_active_run(run.info.run_id)
        raise
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        try:
            mlflow.end_run(status)
        except MlflowException as end_error:  # keep the error that stopped the training
            log.warning(
                "MLflow run %s could not be ended %s: %s", run.info.run_id, status, end_error
            )
        raise
    mlflow.end_run()


def _forget_active_run(run_id: str) -> None:
    """Take `run_id` off this process's active-run stack without telling the store.

    MLflow has no public call for this. `mlflow.end_run()` would retry the failed store
    for minutes; leaving the run on the stack would make the next `start_run` in this
    process refuse ("already active") and MLflow's exit hook mark the run FINISHED.
    """
    stack = mlflow_fluent._active_run_stack.get()
    if stack and stack[-1].info.run_id == run_id:
        stack.pop()
        MLFLOW_RUN_ID.unset()


def registered_model_name(prefix: str, dataset: str) -> str:
    return f"{prefix}-{dataset}"


def alias_name(text: str) -> str:
    """`text` made a valid registry alias: only letters, digits, _ and -; at most 255 chars."""
    alias = re.sub(r"[^\w\-]", "-", text)[:255]
    if not alias or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ValueError(f"{text!r} cannot be made a model alias ({alias!r} is reserved or empty)")
    return alias


def register_best(
    client: MlflowClient,
    model_id: str,
    run_id: str,
    name: str,
    run_name: str,
    seed: int,
    best_val_auc: float,
    champion_alias: str = "champion",
) -> dict[str, Any]:
    """Register logged model `model_id` (of run `run_id`) as a new version of `name`.

    The version is tagged with run name, seed and validation AUC. Alias
    f"{run_name}-best" points at it; `champion_alias` points at the version with
    the highest validation AUC among all versions of `name` carrying that tag
    (earliest version on ties, so the champion only moves on a real improvement).
    The test split never takes part in this choice.

    Returns {"name", "version", "aliases"} with the aliases now on this version.
    """
    if not math.isfinite(best_val_auc):
        raise ValueError(f"{run_name} seed {seed}: best_val_auc is {best_val_auc}, not a number")
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    version = client.create_model_version(
        name,
        source=f"models:/{model_id}",
        run_id=run_id,
        model_id=model_id,
        tags={"medimg.run": run_name, "medimg.seed": str(seed), VAL_AUC_TAG: repr(best_val_auc)},
    )
    client.set_registered_model_alias(name, alias_name(f"{run_name}-best"), version.version)

    tagged = [v for v in client.search_model_versions(f"name = '{name}'") if VAL_AUC_TAG in v.tags]
    champion = max(tagged, key=lambda v: (float(v.tags[VAL_AUC_TAG]), -int(v.version)))
    client.set_registered_model_alias(name, champion_alias, champion.version)

    aliases = client.get_model_version(name, version.version).aliases
    return {"name": name, "version": int(version.version), "aliases": sorted(aliases)}
