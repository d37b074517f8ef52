"""`medimg augment --dataset NAME` (DVC stage augment@NAME): uint8 arrays per split protocol."""

from __future__ import annotations

import argparse

from medimg.commands.base import Command, print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="a key of `datasets:` in params.yaml")


def run(args: argparse.Namespace) -> None:
    from medimg.config.datasets import load_dataset
    from medimg.data.prepare import prepare_dataset

    for protocol, meta in prepare_dataset(
        args.dataset, load_dataset(args.dataset, args.params)
    ).items():
        print(f"prepared {args.dataset}/{protocol}")
        print_json(meta["counts"])


COMMAND = Command(
    "augment",
    "decode, resize and (optionally) augment into uint8 arrays per protocol: "
    "data/prepared/<dataset>/<protocol>/",
    add_arguments,
    run,
)
