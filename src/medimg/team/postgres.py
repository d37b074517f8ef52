"""A PostgreSQL 15 cluster in a folder of its own, managed with initdb and pg_ctl.

As root, initdb and postgres refuse to run: they run as the `postgres` user,
who then owns the cluster's folder. Logins are by password over TCP only (no
Unix socket: its default folder belongs to the system's own PostgreSQL).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from medimg.team import StackError

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_BINARIES = ("initdb", "pg_ctl", "postgres")
ROLE = "medimg"
DATABASES = ("mlflow", "optuna")
# Beside the cluster, mode 0600: the superuser's password, used by create_databases only.
SUPERUSER_FILE = ".pg-superuser"
# Trades durability for speed: only for throw-away test clusters.
NON_DURABLE_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def pg_binaries(pg_bin: Path = PG_BIN) -> Path:
    """`pg_bin` if it holds initdb, pg_ctl and postgres, else a StackError: what to install."""
    missing = [name for name in PG_BINARIES if not (pg_bin / name).is_file()]
    if missing:
        raise StackError(
            f"PostgreSQL 15 server binaries not found in {pg_bin} (missing {', '.join(missing)}); "
            "install them (Debian/Ubuntu: apt-get install postgresql-15) "
            "or pass --pg-bin with the folder that holds initdb and pg_ctl"
        )
    return pg_bin


def _as_cluster_owner(command: list[str]) -> list[str]:
    """`command` run as `postgres` when we are root: initdb and postgres refuse to run as root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _give_to_cluster_owner(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, user="postgres", group="postgres")


def _run(command: list[str], what: str, timeout_s: float = 60) -> str:
    """Run `command`; on failure a StackError with `what` and the command's last output line."""
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise StackError(f"{what} failed: {err}") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise StackError(f"{what} failed (exit {result.returncode}): {lines[-1]}")
    return result.stdout


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def init_cluster(pgdata: Path, pg_bin: Path, durable: bool = True) -> None:
    """initdb a new cluster into `pgdata` (absent), with password logins over TCP.

    Built in a staging folder and renamed into place, so that an interrupted
    initdb leaves no half cluster. The superuser `postgres` gets a random
    password, kept beside the cluster (SUPERUSER_FILE) for `create_databases`;
    workers only ever get the `medimg` role. durable=False: no fsync (tests).
    """
    folder = pgdata.parent
    if pgdata.exists():
        raise StackError(
            f"{pgdata} exists but holds no PostgreSQL cluster; remove it or choose another --dir"
        )
    folder.mkdir(parents=True, exist_ok=True)
    _check_cluster_owner_reaches(folder)
    staging = folder / f".{pgdata.name}.initdb"
    shutil.rmtree(staging, ignore_errors=True)
    # Made here, not by initdb: as `postgres` it may not write into our folder.
    staging.mkdir(mode=0o700)
    _give_to_cluster_owner(staging)
    superuser_file = folder / SUPERUSER_FILE
    superuser_file.write_text(secrets.token_urlsafe(24))
    superuser_file.chmod(0o600)
    _give_to_cluster_owner(superuser_file)
    command = [str(pg_bin / "initdb"), "--pgdata", str(staging), "--username=postgres"]
    command += [f"--pwfile={superuser_file}", "--auth-host=scram-sha-256", "--auth-local=peer"]
    command += ["--encoding=UTF8", "--no-instructions"]
    if not durable:
        command.append("--no-sync")
    _run(_as_cluster_owner(command), f"initdb of {pgdata}")
    staging.rename(pgdata)


def _check_cluster_owner_reaches(folder: Path) -> None:
    """As root, the `postgres` user must be able to enter `folder` (every parent searchable)."""
    if os.geteuid() != 0:
        return
    probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(folder)])
    if probe.returncode != 0:
        raise StackError(
            f"the postgres user cannot enter {folder}: a parent folder is not searchable by "
            "others (chmod o+x it, or choose a --dir such as /srv/medimg-stack)"
        )


def postgres_running(pgdata: Path, pg_bin: Path) -> bool:
    """Whether the cluster in `pgdata` runs (pg_ctl status: 0 runs, 3 stopped)."""
    if not (pgdata / "PG_VERSION").is_file():
        return False
    result = subprocess.run(
        _as_cluster_owner([str(pg_bin / "pg_ctl"), "status", "--pgdata", str(pgdata)]),
        capture_output=True,
        text=True,
    )
    return result.returncode == 0


def start_postgres(
    pgdata: Path, pg_bin: Path, host: str, port: int, log_file: Path, durable: bool = True
) -> None:
    """Start the cluster on host:port (and 127.0.0.1, where the tracking server connects).

    TCP only: no Unix socket, whose default folder belongs to the system's PostgreSQL.
    A LAN `host` gets a pg_hba rule for password logins from the machine's own subnets.
    """
    listen = host if host in ("127.0.0.1", "localhost") else f"127.0.0.1,{host}"
    if not is_loopback(host):
        _allow_lan_logins(pgdata)
    settings = [f"listen_addresses='{listen}'", "unix_socket_directories=''"]
    if not durable:
        settings += NON_DURABLE_SETTINGS
    options = " ".join([f"-p {port}", *(f"-c {s}" for s in settings)])
    log_file.touch()
    _give_to_cluster_owner(log_file)
    command = [str(pg_bin / "pg_ctl"), "start", "--pgdata", str(pgdata), "--wait"]
    command += ["--timeout=30", f"--log={log_file}", f"--options={options}"]
    try:
        _run(_as_cluster_owner(command), f"starting PostgreSQL on {host}:{port}")
    except StackError as err:
        raise StackError(f"{err} (log: {log_file})") from None


def _allow_lan_logins(pgdata: Path) -> None:
    rule = "host all all samenet scram-sha-256"
    hba = pgdata / "pg_hba.conf"
    text = hba.read_text()
    if rule not in text.splitlines():
        hba.write_text(text.rstrip("\n") + f"\n# medimg stack: the LAN (--host)\n{rule}\n")


def stop_postgres(pgdata: Path, pg_bin: Path) -> None:
    """Stop the cluster: running transactions are rolled back, nothing committed is lost."""
    command = [str(pg_bin / "pg_ctl"), "stop", "--pgdata", str(pgdata), "--mode=fast", "--wait"]
    _run(_as_cluster_owner(command), f"stopping PostgreSQL in {pgdata}")


def create_databases(folder: Path, port: int, password: str) -> None:
    """Create the role `medimg` with `password` and its DATABASES, those that are missing."""
    try:
        with psycopg.connect(
            host="127.0.0.1",
            port=port,
            user="postgres",
            password=(folder / SUPERUSER_FILE).read_text(),
            dbname="postgres",
            connect_timeout=5,
            autocommit=True,  # CREATE DATABASE cannot run inside a transaction
        ) as conn:
            _create_role_and_databases(conn, password)
    except psycopg.Error as err:
        message = " ".join(str(err).split())
        raise StackError(f"creating the databases on 127.0.0.1:{port} failed: {message}") from None


def _create_role_and_databases(conn: psycopg.Connection, password: str) -> None:
    role = sql.Identifier(ROLE)
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    conn.execute(
        sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(sql.SQL(verb), role, sql.Literal(password))
    )
    for name in DATABASES:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), role))
