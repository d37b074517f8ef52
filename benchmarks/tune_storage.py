"""Optuna storages under parallel `medimg tune` workers: journal file, SQLite, PostgreSQL.

    python benchmarks/tune_storage.py [--storages journal sqlite postgresql]
        [--workers 1 2 4] [--trials 8] [--epochs 1] [--repeats 3]
        [--stress-workers 1 2 4 8] [--stress-trials 200]
        [--queue-workers 2 4 8] [--queue-trials 50] [--json results.json]

One tracking server for every cell: a team stack (PostgreSQL 15 + `mlflow server`,
started with medimg.team.stack.start_stack, as `medimg stack start` does, durable, in a
temporary folder on free loopback ports) whose MLflow server every worker logs to, so
that only the Optuna storage differs between cells and no local MLflow store (itself a
SQLite file) adds its own contention. The PostgreSQL storage is that stack's `optuna`
database; the journal file and the SQLite database live in each cell's temporary root.

Part 1, `medimg tune` workers. For each storage and worker count, a fresh temporary
project root with tiny prepared arrays (as the tests': 24 train, 8 val, 8 test images,
32 px, one channel; or a copy of --prepared) and a fresh study (a new sampler seed, so
the shared PostgreSQL database does not resume an earlier one): a 2-block CNN, the
learning rate searched, no pruner, --epochs epochs per trial, until the study has
--trials finished trials. That many worker processes run run_tune (what `medimg tune`
runs) with every call of this process to its storage timed (the outermost call only;
the heartbeat thread's writes are left out: they do not hold a trial up). Printed per
cell: the seconds in Optuna storage calls per trial (median of the workers), a trial's
duration less its model.fit time (median of the trials: model building, scoring on val,
MLflow, the storage), finished trials per hour from the first trial's start to the last
one's end (all workers together), and the storage errors: lines of the workers' stderr
that name a database error ("database is locked", OperationalError, IntegrityError,
deadlock, serialization failure, ...), FAIL trials, and workers that exited non-zero.

Part 2, storage only (--stress-workers): each process opens the storage as medimg does
and runs ask, suggest, report and tell in a loop with no training (--stress-trials
trials each, all processes starting at the same instant), the most a storage is ever
asked to bear: trials per second and the errors raised.

Part 3, the trial queue (--queue-workers): a study with P x --queue-trials enqueued
trials (what re-queueing a dead worker's trial makes: WAITING trials with fixed
parameters), popped by P processes at once with ask, then told: how many trials two
processes both got (each must be run once), the errors, and the trials left WAITING.

With --repeats R every cell runs R times; the figures are medians, the values listed.
An empty --workers, --stress-workers or --queue-workers skips that part.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

# The tests' tiny dataset (tests/tiny_data.py), so the benchmark trains on the same arrays.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

STORAGES = ("journal", "sqlite", "postgresql")
# A storage's trouble in a worker's stderr: SQLite's lock, SQLAlchemy's and psycopg's
# errors, PostgreSQL's deadlock and serialization failures, a storage that cannot open.
STORAGE_ERROR = re.compile(
    r"database is locked|OperationalError|IntegrityError|InternalError|UniqueViolation|"
    r"deadlock detected|SerializationFailure|could not serialize|StaleDataError|"
    r"UpdateFinishedTrialError|cannot be opened",
    re.IGNORECASE,
)
# Called from the heartbeat thread, not on a trial's path.
UNTIMED = {"record_heartbeat"}
SIZE = 32


class StorageTimer:
    """Time every call to one storage object's methods, set on the instance itself.

    The object keeps its class, so Optuna still wraps an RDBStorage in its cache and
    runs its heartbeat. A method that calls another of the same storage is counted once.
    """

    def __init__(self, storage: object) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._depth = threading.local()
        for name in dir(type(storage)):
            if name.startswith("__") or name in UNTIMED:
                continue
            attribute = getattr(storage, name, None)
            if callable(attribute) and not isinstance(attribute, type):
                setattr(storage, name, self._timed(attribute))

    def _timed(self, method: Any) -> Any:
        def timed(*args: object, **kwargs: object) -> object:
            depth = getattr(self._depth, "n", 0)
            self._depth.n = depth + 1
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth.n = depth
                if depth == 0:
                    self.seconds += time.perf_counter() - started
                    self.calls += 1

        return timed


def _worker(args: argparse.Namespace) -> None:
    """One `medimg tune` worker with a timed storage; prints one JSON line of its figures."""
    import medimg.tuning.tune_stage as tune_stage
    from medimg.config.params import load_params

    timers: list[StorageTimer] = []
    opened = tune_stage.open_storage

    def open_timed(url: str) -> object:
        storage = opened(url)
        timers.append(StorageTimer(storage))
        return storage

    tune_stage.open_storage = open_timed  # the benchmark's one intrusion: time the storage
    started = time.perf_counter()
    summary = tune_stage.run_tune(
        load_params(args.params).study_settings(args.study), storage=args.storage
    )
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "storage_study": summary["storage_study"],
                "wall_s": time.perf_counter() - started,
                "storage_s": timers[0].seconds,
                "storage_calls": timers[0].calls,
            }
        )
    )


def _tiny_params(trials: int, epochs: int, seed: int, image_size: int) -> dict:
    """params.yaml: one tiny run and one study over its learning rate, no pruner."""
    from tiny_data import tiny_datasets

    return {
        "profile": "sample",
        "datasets": tiny_datasets(image_size),
        "runs": {
            "tiny": {
                "dataset": "chest_xray",
                "split_protocol": "official",
                "model": "xray_cnn",
                "model_options": {"feature_maps": 4, "conv_blocks": 2, "dense_units": [8]},
                "epochs": epochs,
                "batch_size": 8,
                "run_eagerly": True,
                "repeats": 1,
            }
        },
        "tracking": {"experiment_prefix": "storage-bench"},
        "tune": {
            "storage_bench": {
                "run": "tiny",
                "n_trials": trials,
                "pruner": {"name": "none"},
                "sampler": {"name": "tpe", "seed": seed},
                "space": {"learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True}},
            }
        },
    }


def _storage_url(kind: str, root: Path, stack: Any) -> str:
    if kind == "journal":
        return str(root / "journal.log")
    if kind == "sqlite":
        return f"sqlite:///{root / 'optuna.db'}"
    return stack.optuna_storage


def _env(root: Path | None, stack: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MEDIMG_"))}
    if root is not None:
        env["MEDIMG_ROOT"] = str(root)
    env["MLFLOW_TRACKING_URI"] = stack.tracking_uri
    return env


def _error_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if STORAGE_ERROR.search(line))


def _measure(args: argparse.Namespace, kind: str, workers: int, stack: Any) -> dict:
    """One cell of part 1: `workers` tune workers on a fresh study in storage `kind`."""
    import optuna

    from medimg.tuning.storage import open_storage
    from tiny_data import write_tiny_prepared

    with tempfile.TemporaryDirectory(prefix="medimg-storage-bench-") as folder:
        root = Path(folder)
        prepared = root / "data" / "prepared" / "chest_xray" / "official"
        if args.prepared:
            shutil.copytree(args.prepared, prepared)
            image_size = json.loads((prepared / "meta.json").read_text())["image_size"]
        else:
            write_tiny_prepared(root, fingerprint="b" * 64)
            image_size = SIZE
        seed = int(time.time() * 1000) % 2**31
        params_file = root / "params.yaml"
        params_file.write_text(
            yaml.safe_dump(_tiny_params(args.trials, args.epochs, seed, image_size))
        )
        url = _storage_url(kind, root, stack)
        command = [sys.executable, __file__, "--worker", "--params", str(params_file)]
        command += ["--study", "storage_bench", "--storage", url]
        logs = [root / f"worker-{k}.err" for k in range(workers)]
        started = time.perf_counter()
        processes = []
        for log in logs:
            with log.open("w") as err:
                processes.append(
                    subprocess.Popen(
                        command,
                        env=_env(root, stack),
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                    )
                )
        reports, failed_workers = [], 0
        for process in processes:
            out, _ = process.communicate(timeout=3600)
            lines = out.strip().splitlines()
            if process.returncode != 0 or not lines:
                failed_workers += 1
                continue
            reports.append(json.loads(lines[-1]))
        wall = time.perf_counter() - started
        error_lines = sum(_error_lines(log.read_text(errors="replace")) for log in logs)
        if not reports:
            tails = "\n".join(log.read_text(errors="replace")[-1500:] for log in logs)
            raise SystemExit(f"{kind}, {workers} workers: every worker failed\n{tails}")
        study = optuna.load_study(study_name=reports[0]["storage_study"], storage=open_storage(url))
        trials = study.trials
    by_pid: dict[int, list] = {}
    for trial in trials:
        claim = trial.user_attrs.get("medimg.worker", {})
        by_pid.setdefault(claim.get("pid"), []).append(trial)
    per_trial_storage = [
        r["storage_s"] / len(by_pid[r["pid"]]) for r in reports if by_pid.get(r["pid"])
    ] or [float("nan")]
    finished = [t for t in trials if t.state.is_finished() and t.datetime_complete]
    done = [t for t in finished if t.state.name in ("COMPLETE", "PRUNED")]
    outside_fit = [
        (t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs["train_seconds"]
        for t in done
        if "train_seconds" in t.user_attrs
    ]
    window = (
        max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)
    ).total_seconds()
    return {
        "storage": kind,
        "workers": workers,
        "trials": len(done),
        "trials_per_worker": sorted(
            sum(t.state.name in ("COMPLETE", "PRUNED") for t in v) for v in by_pid.values()
        ),
        "storage_s_per_trial": statistics.median(per_trial_storage),
        "outside_fit_s_median": statistics.median(outside_fit),
        "train_s_median": statistics.median(t.user_attrs["train_seconds"] for t in done),
        "trials_per_hour": len(done) / window * 3600 if window > 0 else float("nan"),
        "wall_s": wall,
        "storage_calls": sum(r["storage_calls"] for r in reports),
        "error_lines": error_lines,
        "fail_trials": sum(t.state.name == "FAIL" for t in trials),
        "failed_workers": failed_workers,
    }


def _stress_worker(args: argparse.Namespace) -> None:
    """Part 2: ask/suggest/report/tell in a loop; one JSON line: trials done, errors."""
    import optuna

    from medimg.tuning.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    errors: Counter[str] = Counter()
    try:
        study = optuna.load_study(
            study_name=args.study,
            storage=open_storage(args.storage),
            sampler=optuna.samplers.RandomSampler(seed=os.getpid()),
        )
    except Exception as err:
        print(json.dumps({"done": 0, "seconds": 0.0, "errors": {_error_key(err): 1}}))
        return
    time.sleep(max(0.0, args.start_at - time.time()))
    done, started = 0, time.perf_counter()
    for _ in range(args.stress_trials):
        try:
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            trial.report(x, 0)
            study.tell(trial, x)
            done += 1
        except Exception as err:
            errors[_error_key(err)] += 1
    seconds = time.perf_counter() - started
    print(json.dumps({"done": done, "seconds": seconds, "errors": dict(errors)}))


def _error_key(err: Exception) -> str:
    text = " ".join(str(err).split())
    text = re.sub(r"\[SQL:.*", "", text)
    return f"{type(err).__name__}: {text[:90]}"


def _run_together(workers: int, role: list[str], url: str, study: str, stack: Any) -> list[dict]:
    """Start `workers` copies of this script in `role` on one study, all told to begin at
    the same instant (after every process has imported); each one's last stdout line."""
    start_at = time.time() + 8 + 1.5 * workers
    command = [sys.executable, __file__, *role, "--storage", url, "--study", study]
    command += ["--start-at", str(start_at)]
    processes = [
        subprocess.Popen(command, env=_env(None, stack), stdout=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    return [json.loads(p.communicate(timeout=3600)[0].strip().splitlines()[-1]) for p in processes]


def _stress(args: argparse.Namespace, kind: str, workers: int, stack: Any) -> dict:
    """One cell of part 2 (no training)."""
    import optuna

    from medimg.tuning.storage import open_storage

    with tempfile.TemporaryDirectory(prefix="medimg-storage-stress-") as folder:
        root = Path(folder)
        url = _storage_url(kind, root, stack)
        name = f"stress-{kind}-{workers}-{time.time_ns()}"
        optuna.create_study(storage=open_storage(url), study_name=name)
        role = ["--stress-worker", "--stress-trials", str(args.stress_trials)]
        outs = _run_together(workers, role, url, name, stack)
        trials = optuna.load_study(study_name=name, storage=open_storage(url)).trials
    errors: Counter[str] = Counter()
    for out in outs:
        errors.update(out["errors"])
    done = sum(o["done"] for o in outs)
    slowest = max(o["seconds"] for o in outs)
    return {
        "storage": kind,
        "workers": workers,
        "done": done,
        "asked": workers * args.stress_trials,
        "trials_per_s": done / slowest if slowest > 0 else float("nan"),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "left_running": sum(t.state.name == "RUNNING" for t in trials),
    }


def _queue_worker(args: argparse.Namespace) -> None:
    """Part 3: pop enqueued trials with ask and tell them; one JSON line: numbers, errors."""
    import optuna

    from medimg.tuning.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=args.study, storage=open_storage(args.storage))
    time.sleep(max(0.0, args.start_at - time.time()))
    got: list[int] = []
    errors: Counter[str] = Counter()
    for _ in range(args.queue_trials):
        try:
            trial = study.ask()
            got.append(trial.number)
            study.tell(trial, trial.suggest_float("x", 0.0, 1.0))
        except Exception as err:
            errors[_error_key(err)] += 1
    print(json.dumps({"got": got, "errors": dict(errors)}))


def _queue(args: argparse.Namespace, kind: str, workers: int, stack: Any) -> dict:
    """One cell of part 3: `workers` processes pop one queue of enqueued trials."""
    import optuna

    from medimg.tuning.storage import open_storage

    with tempfile.TemporaryDirectory(prefix="medimg-storage-queue-") as folder:
        root = Path(folder)
        url = _storage_url(kind, root, stack)
        name = f"queue-{kind}-{workers}-{time.time_ns()}"
        study = optuna.create_study(storage=open_storage(url), study_name=name)
        queued = workers * args.queue_trials
        for k in range(queued):
            study.enqueue_trial({"x": k / queued})
        role = ["--queue-worker", "--queue-trials", str(args.queue_trials)]
        outs = _run_together(workers, role, url, name, stack)
        trials = optuna.load_study(study_name=name, storage=open_storage(url)).trials
    popped = Counter(number for out in outs for number in out["got"])
    errors: Counter[str] = Counter()
    for out in outs:
        errors.update(out["errors"])
    return {
        "storage": kind,
        "workers": workers,
        "queued": queued,
        "popped_twice": sum(1 for n in popped.values() if n > 1),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "left_waiting": sum(t.state.name == "WAITING" for t in trials),
    }


def _start_stack(folder: Path) -> Any:
    from medimg.team.stack import free_port, start_stack

    folder.chmod(0o755)  # as root the cluster runs as `postgres`, who must enter it
    return start_stack(
        folder / "stack",
        pg_port=free_port(),
        mlflow_port=free_port(),
        log=lambda message: print(message, file=sys.stderr),
    )


def _median_cell(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows]
    median = statistics.median(values)
    if len(values) == 1:
        return _fmt(key, median)
    return f"{_fmt(key, median)} ({', '.join(_fmt(key, v) for v in values)})"


def _fmt(key: str, value: float) -> str:
    if key == "storage_s_per_trial":
        return f"{value:.3f}"
    if key in ("trials_per_hour", "trials_per_s"):
        return f"{value:.0f}"
    return f"{value:.2f}"


def _cells(
    results: list[dict], storages: list[str], worker_counts: list[int]
) -> Iterator[tuple[str, int, list[dict]]]:
    """(storage, workers, its repeats) for every measured cell, in table order."""
    for kind in storages:
        for workers in worker_counts:
            cell = [r for r in results if r["storage"] == kind and r["workers"] == workers]
            if cell:
                yield kind, workers, cell


def _print_queue_table(args: argparse.Namespace, queue: list[dict]) -> None:
    if not queue:
        return
    print(
        f"\nThe trial queue: P processes pop P x {args.queue_trials} enqueued trials at once; "
        f"{args.repeats} repeat(s), the values"
    )
    print("| storage | processes | queued | popped by two processes | errors | left WAITING |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, workers, cell in _cells(queue, args.storages, args.queue_workers):
        values = [
            " ; ".join(str(r[key]) for r in cell)
            for key in ("popped_twice", "errors", "left_waiting")
        ]
        print(f"| {kind} | {workers} | {cell[0]['queued']} | {' | '.join(values)} |")


def _print_tables(args: argparse.Namespace, rows: list[dict], stress: list[dict]) -> None:
    if not rows:
        _print_stress_table(args, stress)
        return
    import keras

    print(
        f"\n`medimg tune` workers: {args.trials} trials per cell, {args.epochs} epoch(s) each, "
        f"tiny study (2-block CNN, learning rate only, no pruner); Keras backend "
        f"{keras.backend.backend()}; {args.repeats} repeat(s): medians (values)"
    )
    print(
        "| storage | workers | trials (per worker) | in Optuna storage, s per trial | "
        "trial outside model.fit, s | trials per hour | storage errors: stderr lines / "
        "FAIL trials / failed workers |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind, workers, cell in _cells(rows, args.storages, args.workers):
        split = " ; ".join("/".join(map(str, r["trials_per_worker"])) for r in cell)
        errors = " ; ".join(
            f"{r['error_lines']} / {r['fail_trials']} / {r['failed_workers']}" for r in cell
        )
        print(
            f"| {kind} | {workers} | {statistics.median(r['trials'] for r in cell):.0f} "
            f"({split}) | {_median_cell(cell, 'storage_s_per_trial')} | "
            f"{_median_cell(cell, 'outside_fit_s_median')} | "
            f"{_median_cell(cell, 'trials_per_hour')} | {errors} |"
        )
    _print_stress_table(args, stress)


def _print_stress_table(args: argparse.Namespace, stress: list[dict]) -> None:
    if not stress:
        return
    print(
        f"\nStorage only: ask, suggest, report, tell; {args.stress_trials} trials per process, "
        f"all starting together; {args.repeats} repeat(s): medians (values)"
    )
    print("| storage | processes | trials done / asked | trials per s | errors | kinds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, workers, cell in _cells(stress, args.storages, args.stress_workers):
        kinds: Counter[str] = Counter()
        for r in cell:
            kinds.update(r["error_kinds"])
        shown = "; ".join(f"{n} x {k}" for k, n in kinds.most_common(3)) or "-"
        counts = " ; ".join(f"{r['done']} / {r['asked']}" for r in cell)
        print(
            f"| {kind} | {workers} | {counts} | "
            f"{_median_cell(cell, 'trials_per_s')} | "
            f"{' ; '.join(str(r['errors']) for r in cell)} | {shown} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storages", nargs="+", choices=STORAGES, default=list(STORAGES))
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--prepared", type=Path, help="a prepared_dir to copy (default: tiny)")
    parser.add_argument("--stress-workers", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--stress-trials", type=int, default=200)
    parser.add_argument("--queue-workers", type=int, nargs="*", default=[2, 4, 8])
    parser.add_argument("--queue-trials", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write every cell's figures here")
    # worker modes
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stress-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--queue-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--params", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--study", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.stress_worker:
        _stress_worker(args)
        return
    if args.queue_worker:
        _queue_worker(args)
        return

    from medimg.team.stack import stop_stack

    folder = Path(tempfile.mkdtemp(prefix="medimg-storage-bench-stack-"))
    rows: list[dict] = []
    stress: list[dict] = []
    queue: list[dict] = []
    try:
        stack = _start_stack(folder)
        for repeat in range(args.repeats):
            for kind in args.storages:
                for workers in args.workers:
                    rows.append(_measure(args, kind, workers, stack))
                    print(f"[{repeat + 1}/{args.repeats}] {json.dumps(rows[-1])}", file=sys.stderr)
                for workers in args.stress_workers:
                    stress.append(_stress(args, kind, workers, stack))
                    print(
                        f"[{repeat + 1}/{args.repeats}] {json.dumps(stress[-1])}", file=sys.stderr
                    )
                for workers in args.queue_workers:
                    queue.append(_queue(args, kind, workers, stack))
                    print(f"[{repeat + 1}/{args.repeats}] {json.dumps(queue[-1])}", file=sys.stderr)
    finally:
        if (folder / "stack" / "pgdata" / "PG_VERSION").is_file():
            stop_stack(folder / "stack")
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"tune": rows, "stress": stress, "queue": queue}, indent=2))
    print(f"load average at the end: {os.getloadavg()}")
    _print_tables(args, rows, stress)
    _print_queue_table(args, queue)


if __name__ == "__main__":
    main()
