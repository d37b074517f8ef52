"""`medimg fetch --dataset NAME` (DVC stage fetch@NAME): download or copy a dataset, check it."""

from __future__ import annotations

import argparse

from medimg.commands.base import Command, add_dataset_argument, print_json


def run(args: argparse.Namespace) -> None:
    from medimg.config.datasets import load_dataset
    from medimg.data.fetch import fetch_dataset

    report = fetch_dataset(args.dataset, load_dataset(args.dataset, args.params))
    print(f"fetched {args.dataset}: {report.n_images} images, fingerprint {report.fingerprint}")
    print_json(report.counts)


COMMAND = Command(
    "fetch",
    "download or copy a dataset, check it, write data/raw/<dataset>/",
    add_dataset_argument,
    run,
)
