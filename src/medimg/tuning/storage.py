"""Where studies live: any Optuna storage URL, by default a journal file in the repository.

`--storage`, else $MEDIMG_OPTUNA_STORAGE (the team's PostgreSQL, printed by
`medimg stack`), else optuna/journal.log under the project's store root (the
workspace's, also for a queued DVC experiment: medimg.paths.store_root).

Why a journal file and not SQLite by default: several local workers write to one
study at once, and Optuna's own RDBStorage documentation (5.0) says "We would never
recommend SQLite3 for parallel optimization"; SQLite locks the whole database per
writer, and Optuna's maintainers found that popping a queued (WAITING) trial, which
re-queueing a dead worker's trial relies on, is not safe on it between processes
(optuna/optuna#4002). The journal storage appends one JSON line per operation under
a lock file (created with O_EXCL, which also works on NFSv3+) and every process
replays the log, so local workers share it safely, and it survives restarts: it is
the log.

A worker that dies leaves its trial RUNNING. RDB storages notice it by its missing
heartbeat (HEARTBEAT_INTERVAL_S, GRACE_PERIOD_S) and re-queue its parameters
(RetryHeartbeatStaleTrialCallback, the Optuna 5 name of RetryFailedTrialCallback);
Optuna 5.0's journal storage has no heartbeat, for which see medimg.tuning.workers.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

from medimg import paths
from medimg.errors import UserError
from medimg.tracking.store import masked_uri

STORAGE_ENV = "MEDIMG_OPTUNA_STORAGE"
# RDB storages: a running worker records a heartbeat every HEARTBEAT_INTERVAL_S; a
# RUNNING trial without one for GRACE_PERIOD_S is failed by the next trial's start.
# The two variables override them (whole seconds; tests use a few).
HEARTBEAT_INTERVAL_S = 30
GRACE_PERIOD_S = 120
HEARTBEAT_ENV = "MEDIMG_OPTUNA_HEARTBEAT_S"
GRACE_ENV = "MEDIMG_OPTUNA_GRACE_S"
# A trial whose worker died is re-queued at most this often: parameters that kill their
# worker (out of memory) must not be retried forever.
MAX_RETRIES = 2
# PostgreSQL: fail in seconds, not after TCP's minutes, when the server is not there.
CONNECT_TIMEOUT_S = 10
# Workers that open a new database at the same moment all create Optuna's tables, types
# and version rows; all but one fail with "already exists" (a duplicate key). The schema
# is then there, so they try again, at most this often.
SCHEMA_ATTEMPTS = 5


class TuneStorageError(UserError, RuntimeError):
    """The Optuna storage cannot be opened (bad URL, unreachable server, missing folder)."""


def default_journal() -> Path:
    """The project's study journal: optuna/journal.log under the project's store root
    (the workspace's, for an experiment DVC runs in a temporary copy: paths.store_root)."""
    return paths.store_root() / "optuna" / "journal.log"


def storage_url(cli_value: str | None = None) -> str:
    """The storage to use: the --storage value, else $MEDIMG_OPTUNA_STORAGE, else the journal."""
    return cli_value or os.environ.get(STORAGE_ENV) or str(default_journal())


def is_journal(url: str) -> bool:
    """A journal file path (no scheme), as opposed to a database URL."""
    return "://" not in url


def describe(url: str) -> str:
    """`url` as shown in messages, tags and reports: password masked, journal path absolute."""
    return str(Path(url).resolve()) if is_journal(url) else masked_uri(url)


def retry_dead_worker_trial() -> RetryHeartbeatStaleTrialCallback:
    """Optuna's re-queueing of a dead worker's trial (same parameters, state WAITING)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds for RDB storages.

    $MEDIMG_OPTUNA_HEARTBEAT_S and $MEDIMG_OPTUNA_GRACE_S, else HEARTBEAT_INTERVAL_S and
    GRACE_PERIOD_S; the grace period must exceed the interval.
    """
    values = []
    for env, default in ((HEARTBEAT_ENV, HEARTBEAT_INTERVAL_S), (GRACE_ENV, GRACE_PERIOD_S)):
        text = os.environ.get(env, "").strip()
        if not text:
            values.append(default)
            continue
        if not text.isdigit() or int(text) == 0:
            raise TuneStorageError(f"${env} = {text!r}: give a whole number of seconds above 0")
        values.append(int(text))
    interval, grace = values
    if grace <= interval:
        raise TuneStorageError(
            f"the Optuna heartbeat grace period ({grace} s, ${GRACE_ENV}) must be longer than "
            f"its interval ({interval} s, ${HEARTBEAT_ENV}), or live workers' trials fail"
        )
    return interval, grace


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`: a journal file path or an SQLAlchemy database URL."""
    if is_journal(url):
        return _open_journal(Path(url))
    interval, grace = heartbeat_settings()
    engine_kwargs = {}
    if urlsplit(url).scheme.split("+")[0] in ("postgresql", "postgres"):
        engine_kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    attempt = 1
    while True:
        try:
            with warnings.catch_warnings():
                # heartbeat_interval is "experimental" in Optuna 5.0; it is used on purpose.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=interval,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=retry_dead_worker_trial(),
                )
        except Exception as err:  # a bad URL, a missing driver or an unreachable server
            if attempt < SCHEMA_ATTEMPTS and _lost_schema_race(err):
                time.sleep(0.2 * attempt)
                attempt += 1
                continue
            message = " ".join(str(err).split())[:300]
            raise TuneStorageError(
                f"Optuna storage {describe(url)} cannot be opened ({type(err).__name__}: "
                f"{message}); fix --storage or ${STORAGE_ENV}"
            ) from None


def _lost_schema_race(err: Exception) -> bool:
    """Whether `err` is another worker's creation of the same schema, not a lasting fault."""
    if isinstance(err, sqlalchemy.exc.IntegrityError | sqlalchemy.exc.ProgrammingError):
        return True  # duplicate key / type / table
    return isinstance(err, sqlalchemy.exc.OperationalError) and any(
        text in str(err) for text in ("already exists", "database is locked")
    )


def _open_journal(path: Path) -> JournalStorage:
    if path.is_dir():
        raise TuneStorageError(f"Optuna storage {path}: is a folder; give a journal file path")
    if not path.parent.is_dir():
        if path.resolve() != default_journal().resolve():
            raise TuneStorageError(
                f"Optuna storage {path}: the folder {path.parent} does not exist; create it "
                "or give another journal file"
            )
        path.parent.mkdir(parents=True)
    lock = JournalFileOpenLock(str(path))
    return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
