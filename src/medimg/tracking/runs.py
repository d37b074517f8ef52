"""MLflow runs: their parameters and tags, runs that survive a kill, and what dead ones left.

What a killed process left: runs RUNNING (closed as KILLED), logged models PENDING
(discarded before the model is logged again), run ids of runs that are gone.

Tracking is a side concern: training code receives callbacks (medimg.training.mlflow_logger)
and never calls MLflow itself.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import mlflow.tracking.fluent as mlflow_fluent
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus, Run
from mlflow.environment_variables import MLFLOW_RUN_ID
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

import medimg
from medimg import atomic, paths
from medimg.tracking.store import TrackingError, masked_uri, one_line

log = logging.getLogger(__name__)

# MLflow's local store accepts 6,000 characters, but older servers and Databricks
# reject param values over 500; staying under the lower limit keeps runs portable.
MAX_PARAM_VALUE_LENGTH = 500


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


# DVC sets these for the stages of `dvc exp run` (also --queue and --temp): the runs of a
# sweep are found in MLflow by experiment (tags.`medimg.dvc_experiment` = 'lr-1').
DVC_EXPERIMENT_TAGS = {
    "DVC_EXP_NAME": "medimg.dvc_experiment",
    "DVC_EXP_BASELINE_REV": "medimg.dvc_baseline",
}


def dvc_experiment_tags() -> dict[str, str]:
    """The DVC experiment (name, baseline commit) this process runs in; {} outside one."""
    return {tag: os.environ[var] for var, tag in DVC_EXPERIMENT_TAGS.items() if os.environ.get(var)}


def experiment_copy_name() -> str | None:
    """The DVC experiment's name when this process runs in DVC's temporary copy for it
    (`dvc exp run --queue` or `--temp`: paths.experiment_workspace), else None."""
    if paths.experiment_workspace() is None:
        return None
    return os.environ.get("DVC_EXP_NAME") or "unnamed"


def run_tags(
    run_name: str,
    dataset_fingerprint: str,
    split_protocol: str,
    seed: int | None = None,
) -> dict[str, str]:
    """Tags that say which code, data, software and hardware produced a run, and in which
    DVC experiment (dvc_experiment_tags).

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
    tags.update(dvc_experiment_tags())
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


# Tag of the runs of one training state (.medimg-work/<run>/): a random id made with it.
# A re-run finds its runs by it, also one created by a process killed before it could
# write the run's id down.
WORK_TAG = "medimg.work_id"


def run_problem(
    client: MlflowClient, run_id: str, experiment_id: str, identity: Mapping[str, str]
) -> str | None:
    """Why run `run_id` must not be logged into again by the training `identity` names; None
    when it may (it exists, is not deleted, and is that training's run).

    identity: tags the run must carry (e.g. role, seed, parent run). A run without
    WORK_TAG (made before medimg wrote it) passes on its other tags.
    """
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return f"MLflow run {run_id} is not in the store {masked_uri(client.tracking_uri)}"
    if run.info.lifecycle_stage == "deleted":
        return f"MLflow run {run_id} is deleted"
    if run.info.experiment_id != experiment_id:
        return f"MLflow run {run_id} is in experiment {run.info.experiment_id}, not {experiment_id}"
    for key, value in identity.items():
        found = run.data.tags.get(key)
        if found != value and not (key == WORK_TAG and found is None):
            return f"MLflow run {run_id} is another training's ({key} {found!r}, not {value!r})"
    return None


def find_run(client: MlflowClient, experiment_id: str, identity: Mapping[str, str]) -> str | None:
    """The id of the (earliest) active run of `experiment_id` carrying every tag of `identity`."""
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in identity.items())
    found = client.search_runs(
        [experiment_id], query, max_results=1, order_by=["attributes.start_time ASC"]
    )
    return found[0].info.run_id if found else None


def _run_to_resume(
    client: MlflowClient, id_file: Path, experiment_id: str, identity: Mapping[str, str]
) -> str | None:
    """The run named in `id_file` when it may be resumed, else one found by `identity`."""
    if id_file.is_file():
        recorded = id_file.read_text().strip()
        problem = run_problem(client, recorded, experiment_id, identity)
        if problem is None:
            return recorded
        log.warning(
            "%s: %s; the training state is kept and logged into a new run", id_file, problem
        )
    return find_run(client, experiment_id, identity)


@contextmanager
def resumable_run(
    id_file: Path,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str],
    identity: Mapping[str, str],
    nested: bool = False,
) -> Iterator[Run]:
    """Start (or resume) the active MLflow run of the training state whose `id_file` this is.

    Resumed: the run named in `id_file`, unless it is gone (deleted, or not in this
    store: MLFLOW_TRACKING_URI changed) or another training's (`run_problem`): that
    is said in one line and never written into; else the run carrying the tags
    `identity` (also in `tags`; a nested run also its parent's id), which a process
    killed between creating it and writing `id_file` left. Otherwise a new run.
    The id is written as soon as the run exists, so an interrupted training
    continues the same run (its metric steps included) instead of starting a new one.
    A run that raises ends FAILED (KILLED on Ctrl-C); resuming sets it RUNNING again.
    When a tracking server failed (TrackingError), the run is left RUNNING rather than
    ended: ending it would retry against the dead server for minutes. So is a run
    that a full store cannot end. The re-run resumes it, or close_orphaned_runs
    closes it once this process is gone.
    """
    client = MlflowClient(mlflow.get_tracking_uri())
    identity = dict(identity)
    active = mlflow.active_run()
    if nested and active is not None:
        identity[MLFLOW_PARENT_RUN_ID] = active.info.run_id
    run_id = _run_to_resume(client, id_file, experiment_id, identity)
    if run_id is not None:
        run = mlflow.start_run(run_id=run_id, nested=nested)
        mlflow.set_tags(dict(tags))
    else:
        run = mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, tags=dict(tags), nested=nested
        )
    if not id_file.is_file() or id_file.read_text().strip() != run.info.run_id:
        id_file.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_file(id_file, run.info.run_id)
    try:
        yield run
    except TrackingError:
        if urlparse(client.tracking_uri).scheme in ("http", "https"):
            _forget_active_run(run.info.run_id)
        else:  # a database answers at once, or fails at once (full)
            _end_failed(run.info.run_id, "FAILED")
        raise
    except BaseException as err:
        _end_failed(run.info.run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    try:
        mlflow.end_run()
    except MlflowException:
        _forget_active_run(run.info.run_id)  # or MLflow's exit hook tries (and fails) again
        raise


def _end_failed(run_id: str, status: str) -> None:
    """End the active run `run_id` with `status`; when the store refuses (full), say so in one
    line and take it off the stack: the error that stopped the training is the one to show."""
    try:
        mlflow.end_run(status)
    except MlflowException as err:
        _forget_active_run(run_id)
        log.warning(
            "MLflow run %s could not be ended %s (%s); the next training of this "
            "configuration closes it",
            run_id,
            status,
            one_line(err)[:200],
        )


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


def ready_logged_model(
    client: MlflowClient, experiment_id: str, run_id: str, name: str
) -> str | None:
    """The id of run `run_id`'s logged model `name` when one is READY (logged whole), else None.

    Models of the run that are not READY (PENDING: a kill while logging; FAILED: an
    error) are discarded first (`discard_logged_model`), so that logging the model
    again leaves the run one model.
    """
    ready = None
    for model in client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}'"
    ):
        if model.status != LoggedModelStatus.READY:
            discard_logged_model(client, model.model_id)
        elif model.name == name and ready is None:
            ready = model.model_id
    return ready


def discard_unfinished_models(client: MlflowClient, experiment_id: str, run_id: str) -> None:
    """Discard the logged models of run `run_id` that are not READY, as far as the store lets.

    Called when logging a model failed: its half-copied artifacts go first, which also
    frees the space a full store needs to record that the run failed. What the store
    refuses now (it is full) the next training's `ready_logged_model` discards.
    """
    try:
        for model in client.search_logged_models(
            [experiment_id], filter_string=f"source_run_id = '{run_id}'"
        ):
            if model.status != LoggedModelStatus.READY:
                discard_logged_model(client, model.model_id)
    except MlflowException as err:  # keep the error that stopped the logging
        log.warning("unfinished logged models of run %s are left (%s)", run_id, one_line(err)[:200])


def discard_logged_model(client: MlflowClient, model_id: str) -> None:
    """Delete logged model `model_id`: its artifacts (when in a local folder), then the model."""
    location = client.get_logged_model(model_id).artifact_location
    if urlparse(location).scheme == "file":
        shutil.rmtree(url2pathname(urlparse(location).path), ignore_errors=True)
    client.delete_logged_model(model_id)


def store_full_error(err: BaseException, uri: str) -> TrackingError | None:
    """A one-line TrackingError when `err` (or one it was raised from) is a sqlite store that
    is full; else None."""
    seen: BaseException | None = err
    while seen is not None:
        if "database or disk is full" in str(seen):
            database = Path(uri.removeprefix("sqlite:///"))
            free = shutil.disk_usage(database.parent).free // 1024
            return TrackingError(
                f"MLflow store {masked_uri(uri)}: the database {database} is full "
                f"({free} KiB free on its disk); free space there, then run it again"
            )
        seen = seen.__cause__ or seen.__context__
    return None
