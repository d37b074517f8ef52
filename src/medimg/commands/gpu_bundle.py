"""`medimg gpu-bundle`: pack params.yaml and the splits of some runs for the GPU runner."""

from __future__ import annotations

import argparse
from pathlib import Path

from medimg.commands.base import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", required=True, help="keys of `runs:` in params.yaml")
    parser.add_argument("--out", type=Path, required=True, help="the bundle folder to write")


def run(args: argparse.Namespace) -> None:
    from medimg.config.params import load_params
    from medimg.runner.bundle import make_bundle

    info = make_bundle(args.params, load_params(args.params), args.runs, args.out)
    print(
        f"wrote {args.out} (bundle {info.bundle_id[:12]}, profile {info.profile}, "
        f"runs {', '.join(info.runs)})"
    )


COMMAND = Command(
    "gpu-bundle",
    "pack params.yaml and the splits of some runs for the GPU runner (medimg.runner.run)",
    add_arguments,
    run,
)
