"""Start-up and stop times of the team stack, started as the test fixtures start it.

    python benchmarks/team_stack_startup.py --repeats 3

Each repeat, in a fresh folder on free loopback ports, through medimg.team_stack
(the code of `medimg stack` and of tests/conftest.py's `cluster_stack`), with
the fixture's settings (no fsync, one MLflow worker):
- postgres: initdb, start, the role and the two databases;
- mlflow first start: `mlflow server` on the fresh database until /health
  answers (it creates MLflow's tables first);
- mlflow restart: stop and start again on the migrated database (what a
  restarted tracking server costs);
- stop: the server, then PostgreSQL.
The fixture's start-up is postgres + mlflow first start. Prints the median of
each and every measurement.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from medimg.team import mlflow_server, postgres
from medimg.team.stack import free_port

PHASES = ("postgres", "mlflow first start", "mlflow restart", "stop")


def _timed(action) -> tuple[float, object]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def measure_once() -> dict[str, float]:
    """One start, restart and stop of a throw-away stack; seconds per phase."""
    pg_bin = postgres.pg_binaries()
    folder = Path(tempfile.mkdtemp(prefix="medimg-bench-"))
    folder.chmod(0o755)  # the cluster runs as `postgres` when we are root
    pgdata, pg_port, port = folder / "pgdata", free_port(), free_port()
    password = "benchmark"
    backend = f"postgresql://{postgres.ROLE}:{password}@127.0.0.1:{pg_port}/mlflow"
    times: dict[str, float] = {}
    try:

        def start_postgres() -> None:
            postgres.init_cluster(pgdata, pg_bin, durable=False)
            postgres.start_postgres(
                pgdata, pg_bin, "127.0.0.1", pg_port, folder / "pg.log", durable=False
            )
            postgres.create_databases(folder, pg_port, password)

        def start_mlflow():
            return mlflow_server.start_mlflow_server(
                backend, str(folder / "artifacts"), "127.0.0.1", port, folder / "mlflow.log", 1
            )

        times["postgres"], _ = _timed(start_postgres)
        times["mlflow first start"], server = _timed(start_mlflow)
        mlflow_server.stop_process_group(server.pid)
        times["mlflow restart"], server = _timed(start_mlflow)

        def stop() -> None:
            mlflow_server.stop_process_group(server.pid)
            postgres.stop_postgres(pgdata, pg_bin)

        times["stop"], _ = _timed(stop)
    finally:
        if postgres.postgres_running(pgdata, pg_bin):
            postgres.stop_postgres(pgdata, pg_bin)
        shutil.rmtree(folder, ignore_errors=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = [measure_once() for _ in range(args.repeats)]
    # The stack runs no Keras; the backend is named because every figure in docs/ carries it.
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(
        f"team stack start-up, {platform.machine()} with {os.cpu_count()} CPUs, "
        f"Keras backend {backend} (unused here), {args.repeats} repeats"
    )
    for phase in PHASES:
        values = [run[phase] for run in runs]
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"{phase:>20}: median {statistics.median(values):5.1f} s  ({shown})")
    fixture = [run["postgres"] + run["mlflow first start"] for run in runs]
    print(f"{'fixture start-up':>20}: median {statistics.median(fixture):5.1f} s")


if __name__ == "__main__":
    main()
