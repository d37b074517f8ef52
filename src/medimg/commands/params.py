"""`medimg params`: validate the whole params.yaml and print the effective values."""

from __future__ import annotations

import argparse
import json

from medimg.commands.base import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        help="the values under this profile instead of the file's `profile:` "
        "(sample, or a name under profiles:)",
    )
    parser.add_argument(
        "--run", help="print this run only, whole (its run defaults merged, model options filled)"
    )


def run(args: argparse.Namespace) -> None:
    from medimg.config.base import ParamsError, read_yaml
    from medimg.config.params import parse_params

    raw = read_yaml(args.params)
    if args.profile is not None and isinstance(raw, dict):
        raw = {**raw, "profile": args.profile}
    effective = parse_params(raw, args.params).effective()
    if args.run is not None:
        if args.run not in effective["runs"]:
            raise ParamsError(f"unknown run {args.run!r}; defined: {sorted(effective['runs'])}")
        effective = effective["runs"][args.run]
    print(json.dumps(effective, indent=1, sort_keys=True))


COMMAND = Command(
    "params", "validate params.yaml and print the effective values", add_arguments, run
)
