"""Which worker runs which trial, and the trials of workers that died.

Optuna's RDB storages notice a dead worker by its missing heartbeat (storage.py).
Optuna 5.0's journal storage has none, so each medimg worker holds an OS lock
(flock, medimg.training.run_lock) on a file of its own, `<study work>/workers/<id>.lock`,
as long as it runs, and writes a claim {worker, host, pid, trial, lock path} on every
trial it starts (the full path, so workers of two clones on one host see each other).
The kernel releases a lock however its process ends, so a worker of the same host that
can take a claimer's lock knows the claimer is gone: it marks the trial FAIL and
re-queues its parameters with Optuna's RetryHeartbeatStaleTrialCallback, as the RDB
heartbeat does. Workers run this sweep when they start and before every trial, one
at a time (the study lock), so a trial is failed and re-queued once.

A claim is written milliseconds after the trial starts; a trial RUNNING for
UNCLAIMED_GRACE_S without a claim of its own lost its worker in between. Trials
claimed on another host are left to the RDB heartbeat (a journal file shared over
NFS between hosts has no such check).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from medimg.training.run_lock import RunLockedError, exclusive_run
from medimg.tuning.storage import retry_dead_worker_trial

CLAIM_ATTR = "medimg.worker"
UNCLAIMED_GRACE_S = 60
STUDY_LOCK_TIMEOUT_S = 120
_LOCK_POLL_S = 0.05


@contextmanager
def waiting_lock(
    lock_file: Path, what: str, timeout_s: float = STUDY_LOCK_TIMEOUT_S
) -> Iterator[None]:
    """Hold `lock_file` (exclusive_run), waiting up to `timeout_s` for another holder."""
    deadline = time.monotonic() + timeout_s
    with ExitStack() as stack:
        while True:
            try:
                stack.enter_context(exclusive_run(lock_file, what))
                break
            except RunLockedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(_LOCK_POLL_S)
        yield


class Worker:
    """This process as a worker of one study: its lock file and its claims on trials."""

    def __init__(self, study_dir: Path) -> None:
        self.host = socket.gethostname()
        self.id = f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.workers_dir = study_dir / "workers"
        self.lock_file = (self.workers_dir / f"{self.id}.lock").resolve()

    @contextmanager
    def running(self) -> Iterator[None]:
        """Hold this worker's lock while the block runs; remove its file afterwards."""
        try:
            with exclusive_run(self.lock_file, f"tuning worker {self.id}"):
                yield
        finally:
            # Its trials are all finished (Optuna tells before the block ends), so no
            # sweep will look for this file again.
            self.lock_file.unlink(missing_ok=True)

    def claim(self, trial: optuna.Trial) -> None:
        """Mark `trial` as run by this worker (first thing in the objective)."""
        trial.set_user_attr(
            CLAIM_ATTR,
            {
                "worker": self.id,
                "host": self.host,
                "pid": os.getpid(),
                "trial": trial.number,
                # the full path: workers of another clone on this host have other folders
                "lock": str(self.lock_file),
            },
        )


def _claimer_is_gone(trial: FrozenTrial, workers_dir: Path, host: str) -> bool:
    claim = trial.user_attrs.get(CLAIM_ATTR)
    # A re-queued trial inherits its predecessor's attributes: a claim of another number
    # is not this trial's.
    if not isinstance(claim, dict) or claim.get("trial") != trial.number:
        started = trial.datetime_start
        return (
            started is not None and (datetime.now() - started).total_seconds() > UNCLAIMED_GRACE_S
        )
    if claim.get("host") != host:
        return False
    lock_file = Path(claim.get("lock") or workers_dir / f"{claim['worker']}.lock")
    if not lock_file.exists():
        return True
    try:
        with exclusive_run(lock_file, f"tuning worker {claim['worker']}"):
            pass
    except RunLockedError:
        return False
    lock_file.unlink(missing_ok=True)
    return True


def fail_trials_of_dead_workers(
    study: optuna.Study, study_dir: Path, on_failed: Callable[[FrozenTrial], None]
) -> list[int]:
    """Fail and re-queue every RUNNING trial whose worker is gone; return their numbers.

    `on_failed` gets each failed trial (to close its MLflow run and remove its work
    folder). Runs under the study lock, so concurrent sweeps do not re-queue twice.
    """
    workers_dir = study_dir / "workers"
    host = socket.gethostname()
    failed = []
    with waiting_lock(study_dir / "study.lock", "the study's worker sweep"):
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not _claimer_is_gone(trial, workers_dir, host):
                continue
            # Told by number: Optuna lets any process finish a trial. A sweep on another
            # host that got there first has re-queued it already: leave it.
            try:
                study.tell(trial.number, state=TrialState.FAIL)
            except (ValueError, UpdateFinishedTrialError):
                continue
            frozen = _trial(study, trial.number)
            retry_dead_worker_trial()(study, frozen)
            on_failed(frozen)
            failed.append(trial.number)
    return failed


def _trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial `number` as the storage has it now."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)
