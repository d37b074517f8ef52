"""`medimg fetch --dataset NAME` (DVC stage fetch@NAME): download or copy a dataset, check it."""

from __future__ import annotations

import argparse

from medimg.commands.base import Command, print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="a key of `datasets:` in params.yaml")


def run(args: argparse.Namespace) -> None:
    from medimg.config.datasets import load_dataset
    from medimg.data.fetch import fetch_dataset

    report = fetch_dataset(args.dataset, load_dataset(args.dataset, args.params))
    print(f"fetched {args.dataset}: {report.n_images} images, fingerprint {report.fingerprint}")
    print_json(report.counts)


COMMAND = Command(
    "fetch", "download or copy a dataset, check it, write data/raw/<dataset>/", add_arguments, run
)
