"""`medimg serve`: serve a registered or logged model of the project's store over HTTP."""

from __future__ import annotations

import argparse

from medimg.commands.base import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="models:/<name>@<alias> (e.g. models:/medimg-chest_xray@champion), "
        "models:/<name>/<version> or runs:/<run_id>/model, from the project's MLflow store "
        "(MLFLOW_TRACKING_URI when set)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument("--port", type=int, default=5001, help="default: %(default)s")
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> None:
    from medimg.inference.serving import serve

    serve(args.model, args.host, args.port, args.workers)


COMMAND = Command(
    "serve",
    "serve a model of the project's MLflow store over HTTP (mlflow models serve)",
    add_arguments,
    run,
)
