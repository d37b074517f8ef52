"""`medimg summary`: what the workspace's pipeline results changed against a git revision."""

from __future__ import annotations

import argparse

from medimg.commands.base import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base",
        default="HEAD",
        help="the git revision to compare with, e.g. main or origin/main (default: %(default)s, "
        "the last commit)",
    )


def run(args: argparse.Namespace) -> None:
    from medimg import paths
    from medimg.reporting.summary import pipeline_summary

    print(pipeline_summary(args.base, paths.root()), end="")


COMMAND = Command(
    "summary",
    "Markdown for a pull request (after dvc repro): `dvc params diff` and `dvc metrics diff` "
    "against --base, and the report's headline tables",
    add_arguments,
    run,
)
