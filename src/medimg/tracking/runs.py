"""MLflow runs: their parameters and tags, runs that survive a kill, and runs left by dead ones.

Tracking is a side concern: training code receives callbacks (medimg.tracking.callbacks)
and never calls MLflow itself.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.tracking.fluent as mlflow_fluent
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.environment_variables import MLFLOW_RUN_ID
from mlflow.exceptions import MlflowException

import medimg
from medimg import atomic, paths
from medimg.tracking.store import TrackingError

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
