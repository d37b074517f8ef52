"""`medimg augment --dataset NAME` (DVC stage augment@NAME): uint8 arrays per split protocol."""

from __future__ import annotations

import argparse

from medimg.commands.base import Command, add_dataset_argument, print_json


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
    add_dataset_argument,
    run,
)
