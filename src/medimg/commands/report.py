"""`medimg report` (DVC stage report): the thesis's tables with ours beside them, from MLflow."""

from __future__ import annotations

import argparse

from medimg.commands.base import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> None:
    from medimg.config.params import load_params
    from medimg.reporting.report import write_report

    for path in write_report(load_params(args.params)):
        print(f"wrote {path}")


COMMAND = Command(
    "report",
    "the thesis's tables with ours beside them, from the runs in MLflow: "
    "reports/report.md and reports/report.html",
    add_arguments,
    run,
)
