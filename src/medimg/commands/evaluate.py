"""`medimg evaluate --run NAME` (DVC stage evaluate@NAME): every repeat on val and test."""

from __future__ import annotations

import argparse

from medimg.commands.base import Command, print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a key of `runs:` in params.yaml")


def run(args: argparse.Namespace) -> None:
    from medimg.config.runs import load_run_settings
    from medimg.evaluation.evaluate_stage import run_evaluate

    metrics = run_evaluate(load_run_settings(args.run, args.params))
    test = metrics.get("test", {})
    print(f"evaluated {args.run}")
    print_json({k: test[k] for k in ("accuracy", "roc_auc", "f1") if k in test})


COMMAND = Command(
    "evaluate",
    "evaluate a trained configuration on val and test: reports/<run>/",
    add_arguments,
    run,
)
