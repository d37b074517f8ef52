"""The team stack: one folder, a PostgreSQL cluster and an MLflow server; `medimg stack`.

    stack.json     host, ports, artifacts destination, the role's password (mode 0600)
    pgdata/        the PostgreSQL cluster (owned by the `postgres` user when run as root)
    postgres.log   mlflow.log   mlflow.pid
    artifacts/     MLflow's artifacts, unless --artifacts-destination names another place

PostgreSQL holds two databases owned by the role `medimg`: `mlflow` (the
tracking server's store) and `optuna` (studies shared by workers). Workers need
two variables, printed by `start`: MLFLOW_TRACKING_URI (the tracking server;
artifacts go through it) and MEDIMG_OPTUNA_STORAGE (the optuna database).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from medimg import atomic
from medimg.team import StackError, url_host
from medimg.team.mlflow_server import (
    running_mlflow_pid,
    start_mlflow_server,
    stop_process_group,
    wait_until_answers,
)
from medimg.team.postgres import (
    DATABASES,
    PG_BIN,
    ROLE,
    create_databases,
    init_cluster,
    pg_binaries,
    postgres_running,
    start_postgres,
    stop_postgres,
)

DEFAULT_FOLDER = ".medimg-stack"
# The stack's state file; the only one holding the password, so readable by its owner only.
STATE_FILE = "stack.json"
# The LAN ranges that MLflow's server admits in the Host header by default.
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


@dataclass(frozen=True)
class Stack:
    """Where a started stack listens; `password` is the `medimg` role's."""

    folder: Path
    host: str
    pg_port: int
    mlflow_port: int
    password: str
    artifacts_destination: str

    def database_url(self, database: str, host: str | None = None) -> str:
        """postgresql:// URL of one of DATABASES as role `medimg` (SQLAlchemy and libpq read it)."""
        return (
            f"postgresql://{ROLE}:{self.password}@{url_host(host or self.host)}:"
            f"{self.pg_port}/{database}"
        )

    @property
    def tracking_uri(self) -> str:
        return f"http://{url_host(self.host)}:{self.mlflow_port}"

    @property
    def optuna_storage(self) -> str:
        return self.database_url("optuna")

    def exports(self) -> str:
        """The two lines a worker runs (or `eval`s) to use this stack."""
        return (
            f"export MLFLOW_TRACKING_URI={self.tracking_uri}\n"
            f"export MEDIMG_OPTUNA_STORAGE={self.optuna_storage}"
        )


def check_host(host: str) -> None:
    """Accept a loopback or private LAN address: the one the printed URLs give to workers.

    A wildcard is no address a worker can use; a name or a public address is
    refused by MLflow's server (its Host check admits only these by default),
    and would offer an unauthenticated server to the internet.
    """
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not (
        address.is_loopback or any(address in net for net in PRIVATE_NETWORKS)
    ):
        raise StackError(
            f"--host {host!r}: give the address workers will connect to: 127.0.0.1 for this "
            "machine only, or its private LAN address (10.x, 172.16-31.x, 192.168.x, fc00::/7); "
            "not a wildcard, a name or a public address"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on now (the OS picks it)."""
    with socket.socket(_family(host)) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_port_free(host: str, port: int, flag: str) -> None:
    """A StackError naming `flag` when something already listens on host:port."""
    with socket.socket(_family(host)) as sock:
        # As the servers do: a port in TIME_WAIT after a stop is free to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise StackError(
                f"port {port} on {host} is in use ({err.strerror}); "
                f"stop what listens there or choose another with {flag}"
            ) from None


def read_state(folder: Path) -> Stack | None:
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    return Stack(**{**state, "folder": Path(state["folder"])})


def _write_state(stack: Stack) -> None:
    state = json.dumps({**asdict(stack), "folder": str(stack.folder)}, indent=2)
    atomic.write_file(stack.folder / STATE_FILE, state, mode=0o600)  # it holds the password


def _local_destination(destination: str) -> str:
    """A local artifacts folder made absolute (the server's working folder is not ours)."""
    return destination if "://" in destination else str(Path(destination).resolve())


def start_stack(
    folder: Path,
    host: str = "127.0.0.1",
    pg_port: int = 5432,
    mlflow_port: int = 5000,
    artifacts_destination: str | None = None,
    pg_bin: Path = PG_BIN,
    durable: bool = True,
    mlflow_workers: int | None = None,
    log: Callable[[str], None] = print,
) -> Stack:
    """Start what is not running yet of the stack in `folder`; return where it listens.

    Idempotent: a second start finds both servers running and starts nothing.
    Host and ports may change between a stop and the next start; the artifacts
    destination may not (runs logged so far would lose their artifacts).
    Everything is checked (binaries, host, ports) before anything is created.
    """
    check_host(host)
    pg_bin = pg_binaries(pg_bin)
    folder = folder.resolve()
    stack = _planned_stack(folder, host, pg_port, mlflow_port, artifacts_destination)
    pgdata = folder / "pgdata"
    pg_running = postgres_running(pgdata, pg_bin)
    mlflow_pid = running_mlflow_pid(folder)
    previous = read_state(folder)
    if (pg_running or mlflow_pid) and previous is None:
        raise StackError(
            f"the stack in {folder} runs but its {STATE_FILE} is missing; "
            f"stop it (medimg stack stop --dir {folder}) and start it again"
        )
    if (pg_running or mlflow_pid) and previous != stack:
        raise StackError(
            f"the stack in {folder} already runs on {previous.host}, PostgreSQL port "
            f"{previous.pg_port}, MLflow port {previous.mlflow_port}; stop it first "
            f"(medimg stack stop --dir {folder}) to change them"
        )
    if not pg_running:
        for address in {host, "127.0.0.1"}:  # the tracking server connects on 127.0.0.1
            check_port_free(address, pg_port, "--port-pg")
    if mlflow_pid is None:
        check_port_free(host, mlflow_port, "--port-mlflow")

    folder.mkdir(parents=True, exist_ok=True)
    if not (pgdata / "PG_VERSION").is_file():
        log(f"creating a PostgreSQL cluster in {pgdata}")
        init_cluster(pgdata, pg_bin, durable)
    if not pg_running:
        start_postgres(pgdata, pg_bin, host, pg_port, folder / "postgres.log", durable)
    create_databases(folder, pg_port, stack.password)
    _write_state(stack)
    log(f"PostgreSQL running on {host}:{pg_port} (databases {', '.join(DATABASES)})")

    if mlflow_pid is None:
        log(f"starting the MLflow server (log: {folder / 'mlflow.log'})")
        _start_stack_mlflow_server(stack, mlflow_workers)
    else:
        wait_until_answers(stack.tracking_uri, None, folder / "mlflow.log", timeout_s=10)
    log(f"MLflow server running on {stack.tracking_uri} (artifacts: {stack.artifacts_destination})")
    return stack


def _planned_stack(
    folder: Path, host: str, pg_port: int, mlflow_port: int, artifacts_destination: str | None
) -> Stack:
    """The stack to start: the password and artifacts destination of an earlier start, if any."""
    previous = read_state(folder)
    if previous is None:
        destination = _local_destination(artifacts_destination or str(folder / "artifacts"))
        return Stack(folder, host, pg_port, mlflow_port, secrets.token_urlsafe(18), destination)
    if artifacts_destination is not None:
        destination = _local_destination(artifacts_destination)
        if destination != previous.artifacts_destination:
            raise StackError(
                f"the stack in {folder} keeps its artifacts in {previous.artifacts_destination}; "
                f"a new destination ({destination}) would orphan the runs logged so far: "
                "use another --dir for a new stack"
            )
    return Stack(
        folder, host, pg_port, mlflow_port, previous.password, previous.artifacts_destination
    )


def _start_stack_mlflow_server(stack: Stack, workers: int | None) -> None:
    if "://" not in stack.artifacts_destination:
        Path(stack.artifacts_destination).mkdir(parents=True, exist_ok=True)
    process = start_mlflow_server(
        stack.database_url("mlflow", host="127.0.0.1"),
        stack.artifacts_destination,
        stack.host,
        stack.mlflow_port,
        stack.folder / "mlflow.log",
        workers=workers,
    )
    (stack.folder / "mlflow.pid").write_text(str(process.pid))


def stop_stack(folder: Path, pg_bin: Path = PG_BIN) -> list[str]:
    """Stop the MLflow server, then PostgreSQL; return what was stopped (nothing: [])."""
    folder = folder.resolve()
    pgdata = folder / "pgdata"
    if not (pgdata / "PG_VERSION").is_file():
        raise StackError(f"no team stack in {folder} (no {pgdata}); give its --dir")
    stopped = []
    pid = running_mlflow_pid(folder)
    if pid is not None:
        stop_process_group(pid)
        stopped.append(f"MLflow server (pid {pid})")
    (folder / "mlflow.pid").unlink(missing_ok=True)
    if postgres_running(pgdata, pg_binaries(pg_bin)):
        stop_postgres(pgdata, pg_bin)
        stopped.append(f"PostgreSQL ({pgdata})")
    return stopped


def stack_status(folder: Path, pg_bin: Path = PG_BIN) -> dict[str, str]:
    """{"postgres": ..., "mlflow": ...}, each "running ..." or "stopped"."""
    folder = folder.resolve()
    state = read_state(folder)
    if state is None:
        raise StackError(f"no team stack in {folder} (no {STATE_FILE}); give its --dir")
    pg = "stopped"
    if postgres_running(folder / "pgdata", pg_binaries(pg_bin)):
        pg = f"running on {state.host}:{state.pg_port}"
    mlflow = "stopped"
    pid = running_mlflow_pid(folder)
    if pid is not None:
        try:
            answers = requests.get(f"{state.tracking_uri}/health", timeout=5).status_code == 200
        except requests.RequestException:
            answers = False
        mlflow = f"{'running' if answers else 'not answering'} on {state.tracking_uri} (pid {pid})"
    return {"postgres": pg, "mlflow": mlflow}


def run_command(args: argparse.Namespace) -> None:
    """`medimg stack ACTION` (arguments: medimg.cli). `start` prints the two export lines on
    stdout and all else on stderr, so that `eval "$(medimg stack start)"` sets them."""
    folder = args.dir or Path(DEFAULT_FOLDER)
    pg_bin = args.pg_bin or PG_BIN
    if args.action == "start":
        stack = start_stack(
            folder,
            host=args.host,
            pg_port=args.port_pg,
            mlflow_port=args.port_mlflow,
            artifacts_destination=args.artifacts_destination,
            pg_bin=pg_bin,
            log=lambda message: print(message, file=sys.stderr),
        )
        print(stack.exports())
    elif args.action == "stop":
        stopped = stop_stack(folder, pg_bin)
        print(f"stopped {', '.join(stopped)}" if stopped else f"nothing runs in {folder}")
    else:
        for server, state in stack_status(folder, pg_bin).items():
            print(f"{server}: {state}")
