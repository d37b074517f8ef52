"""`medimg import-results`: log the GPU runner's results folders into the MLflow store."""

from __future__ import annotations

import argparse
from pathlib import Path

from medimg.commands.base import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folders",
        nargs="+",
        type=Path,
        help="runner results folders or the .tar.gz a device call packs them in",
    )


def run(args: argparse.Namespace) -> None:
    from medimg.config.base import load_raw
    from medimg.config.runs import tracking_from
    from medimg.runner.importer import import_results

    tracking = tracking_from(load_raw(args.params), args.params)
    for folder in args.folders:
        for run_name, parent in import_results(folder, tracking.experiment_prefix).items():
            print(f"{folder}: {run_name} -> MLflow parent run {parent}")


COMMAND = Command(
    "import-results",
    "log results folders written by the GPU runner into the MLflow store",
    add_arguments,
    run,
)
