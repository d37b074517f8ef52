"""`medimg confirm --study NAME` (DVC stage confirm@NAME): the best trial on fresh seeds."""

from __future__ import annotations

import argparse

from medimg.commands.base import Command, print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="a key of `tune:` in params.yaml")


def run(args: argparse.Namespace) -> None:
    from medimg.config.studies import load_study_settings
    from medimg.evaluation.evaluate_stage import run_evaluate
    from medimg.training.train_stage import run_train
    from medimg.tuning.confirm import confirmation_name, confirmation_settings, read_best_record

    settings = load_study_settings(args.study, args.params)
    confirmation = confirmation_settings(settings, read_best_record(settings))
    run_train(confirmation)
    details = run_evaluate(confirmation)
    test = details.get("test", {})
    print(
        f"confirmed study {args.study}: run {confirmation_name(args.study)}, "
        f"{settings.study.confirm_repeats} fresh seeds; test metrics (mean over seeds):"
    )
    print_json({k: test[k]["mean"] for k in ("accuracy", "roc_auc") if k in test})


COMMAND = Command(
    "confirm",
    "train a study's best values again on fresh seeds and evaluate them, as run <study>_best: "
    "models/<study>_best/, reports/runs/<study>_best/",
    add_arguments,
    run,
)
