"""What every command shares: its declaration, its one-line errors, a stage's process.

A user error (medimg.errors.UserError: a bad key, file or option, a stage run out of
order) is printed as one line, "medimg <command>: error: ...", with exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from medimg.errors import UserError

PARAMS_FILE = "params.yaml"  # as medimg.config.base.PARAMS_FILE, without importing it
USER_ERROR_STATUS = 2


@dataclass(frozen=True)
class Command:
    """A subcommand: `add_arguments(parser)` declares its options, `run(args)` does the work
    (its heavy imports inside, so that `medimg --help` stays fast) and returns an exit
    status (None = 0). args.params is the params file, for commands that read one."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


def add_params_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", type=Path, default=Path(PARAMS_FILE), help="params file (default: %(default)s)"
    )


def add_dataset_argument(parser: argparse.ArgumentParser) -> None:
    """--dataset, the one argument of the data stages' commands."""
    parser.add_argument("--dataset", required=True, help="a key of `datasets:` in params.yaml")


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def configure_logging() -> None:
    """medimg's notes (e.g. stage timings, kept out of DVC outputs) go to stderr, one line
    each; other libraries stay at their warnings."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("medimg").setLevel(logging.INFO)


def execute(command: Command, args: argparse.Namespace) -> int:
    """Run `command`; a user error becomes one line on stderr and exit status 2."""
    configure_logging()
    try:
        return command.run(args) or 0
    except UserError as err:
        print(f"medimg {command.name}: error: {err}", file=sys.stderr)
        return USER_ERROR_STATUS


def standalone_parser(command: Command) -> argparse.ArgumentParser:
    """The parser of one command on its own (a stage script), with --params."""
    parser = argparse.ArgumentParser(prog=f"medimg {command.name}", description=command.help)
    add_params_argument(parser)
    command.add_arguments(parser)
    return parser


def run_stage(command: Command, argv: Sequence[str]) -> NoReturn:
    """A DVC stage's process (stages/*.py): run `command`, then exit without the teardown.

    Tearing down an interpreter that has TensorFlow and MLflow loaded takes longer
    than many of the sample's stages take to work: 1.5 s after `import keras, mlflow`
    alone, 3.5 to 4 s between a train stage's last line and DVC's next step (this
    2-core CPU). It is the interpreter finalising every module and object, and the
    ~30 stages of `make run` pay it one after the other. When the command has
    returned, everything the stage writes is closed and renamed into place
    (atomic.py), so the process ends the way the interpreter would, minus that: the
    threading module's shutdown (which tells thread pools to stop, then joins the
    non-daemon threads), the exit handlers (logging's flush, MLflow's, temporary
    folders'), the standard streams' flush, then `os._exit`. An exception still
    leaves through the normal path, with its traceback.
    """
    code = execute(command, standalone_parser(command).parse_args(argv))
    # The two calls CPython's own finalisation makes first, in its order. Both are
    # private; a hand-written join instead hung on idle thread-pool workers, which
    # only threading's shutdown callbacks release.
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
