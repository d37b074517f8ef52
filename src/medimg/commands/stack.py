"""`medimg stack start|stop|status`: team mode, PostgreSQL + an MLflow tracking server."""

from __future__ import annotations

import argparse
from pathlib import Path

from medimg.commands.base import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument(
        "--dir",
        type=Path,
        help="the stack's folder: cluster, logs, artifacts (default: .medimg-stack)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address both servers listen on and workers connect to: 127.0.0.1, or a "
        "private LAN address, which opens them to the LAN (read docs/team.md first)",
    )
    parser.add_argument(
        "--port-pg", type=int, default=5432, help="PostgreSQL's port (default: 5432)"
    )
    parser.add_argument(
        "--port-mlflow", type=int, default=5000, help="MLflow's port (default: 5000)"
    )
    parser.add_argument(
        "--artifacts-destination",
        help="where the tracking server stores artifacts: a folder or s3://bucket/prefix "
        "(default: <dir>/artifacts); fixed at the first start",
    )
    parser.add_argument(
        "--pg-bin", type=Path, help="PostgreSQL's binaries (default: /usr/lib/postgresql/15/bin)"
    )


def run(args: argparse.Namespace) -> None:
    from medimg.team.stack import run_command

    run_command(args)


COMMAND = Command(
    "stack", "team mode: start, stop or show PostgreSQL + an MLflow server", add_arguments, run
)
