"""`medimg split --dataset NAME` (DVC stage split@NAME): train/val/test per split protocol."""

from __future__ import annotations

import argparse

from medimg.commands.base import Command, add_dataset_argument, print_json


def run(args: argparse.Namespace) -> None:
    from medimg.config.datasets import load_dataset
    from medimg.data.split import split_dataset

    for protocol, report in split_dataset(
        args.dataset, load_dataset(args.dataset, args.params)
    ).items():
        print(f"split {args.dataset}/{protocol} (leaky={report['leaky']})")
        print_json({k: report[k] for k in ("totals", "patient_overlap", "duplicate_overlap")})


COMMAND = Command(
    "split",
    "split a fetched dataset into train/val/test, per protocol: data/splits/<dataset>/<protocol>/",
    add_dataset_argument,
    run,
)
