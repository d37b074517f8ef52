"""`medimg train --run NAME` (DVC stage train@NAME): every repeat of one run, tracked in MLflow."""

from __future__ import annotations

import argparse

from medimg.commands.base import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a key of `runs:` in params.yaml")


def run(args: argparse.Namespace) -> None:
    from medimg.config.runs import load_run_settings
    from medimg.training.train_stage import run_train

    summary = run_train(load_run_settings(args.run, args.params))
    print(f"trained {args.run}: parent MLflow run {summary['parent_run_id']}")


COMMAND = Command(
    "train",
    "train one configuration `repeats` times, tracked in MLflow: models/<run>/",
    add_arguments,
    run,
)
