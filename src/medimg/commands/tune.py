"""`medimg tune --study NAME` (DVC stage tune@NAME): an Optuna study over one run."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from medimg.commands.base import Command


def _positive(kind: type) -> Callable[[str], float]:
    """argparse type: a number of `kind` above 0."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="a key of `tune:` in params.yaml")
    parser.add_argument(
        "--n-trials",
        type=_positive(int),
        help="finished trials the study should have, all workers together "
        "(default: tune.<study>.n_trials)",
    )
    parser.add_argument(
        "--timeout", type=_positive(float), help="seconds after which no trial starts"
    )
    parser.add_argument(
        "--storage",
        help="Optuna storage: a database URL or a journal file (default: "
        "$MEDIMG_OPTUNA_STORAGE, else optuna/journal.log)",
    )


def run(args: argparse.Namespace) -> None:
    from medimg.config.studies import load_study_settings
    from medimg.tuning.tune_stage import run_tune

    settings = load_study_settings(args.study, args.params)
    summary = run_tune(
        settings, n_trials=args.n_trials, timeout_s=args.timeout, storage=args.storage
    )
    counts = summary["counts"]
    print(
        f"study {args.study} ({summary['storage_study']} in {summary['storage']}): "
        f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed; "
        f"best val {settings.study.objective} {summary['best_value']:.4f} "
        f"(trial {summary['best_trial']}); MLflow study run {summary['parent_run_id']}"
    )
    for note in summary["notes"]:
        print(f"note: {note}")
    print("apply the best values as an ordinary 5-seed run:")
    print(f"  {summary['command']}")
    for key in summary["shadowed_by_profile"]:
        print(f"note: profile {settings.profile!r} overrides {key}: edit it there instead")


COMMAND = Command(
    "tune",
    "run an Optuna study over a run (one worker; start several to run trials in parallel): "
    "reports/tune/<study>/",
    add_arguments,
    run,
)
