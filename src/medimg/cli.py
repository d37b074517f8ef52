"""`medimg`: one subcommand per pipeline stage, plus predict, report, params and more.

Each subcommand is a module of medimg.commands; DVC runs the stage ones through the
short scripts in stages/ (the same code). Heavy imports (Keras, MLflow) happen inside
the commands, so `medimg fetch` and `medimg --help` do not pay for them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from medimg.commands import (
    augment,
    confirm,
    evaluate,
    fetch,
    gpu_bundle,
    import_results,
    params,
    predict,
    report,
    serve,
    split,
    stack,
    summary,
    train,
    tune,
)
from medimg.commands.base import Command, add_params_argument, execute

# In the order `medimg --help` lists them: the pipeline's, then the rest.
COMMANDS: tuple[Command, ...] = tuple(
    module.COMMAND
    for module in (
        fetch,
        split,
        augment,
        train,
        evaluate,
        tune,
        confirm,
        predict,
        serve,
        report,
        summary,
        gpu_bundle,
        import_results,
        params,
        stack,
    )
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medimg",
        description="Reproducible biomedical image classification: "
        "fetch -> split -> augment -> train -> evaluate (normally run through `dvc repro`).",
    )
    add_params_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(command_object=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return execute(args.command_object, args)


if __name__ == "__main__":
    sys.exit(main())
