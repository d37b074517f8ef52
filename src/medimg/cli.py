"""`medimg`: one subcommand per pipeline stage, plus `predict` and `params`.

DVC calls the same code through the short scripts in stages/. Heavy imports
(Keras, MLflow) happen inside the subcommands, so `medimg fetch` and
`medimg --help` do not pay for them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from medimg.config import PARAMS_FILE, Params, ParamsError, load_params

# Errors that mean "bad input or a stage run out of order": shown as one clear
# message without a traceback. Anything else is a bug and keeps its traceback.
_USER_ERRORS = (
    "medimg.config:ParamsError",
    "medimg.data.fetch:FetchError",
    "medimg.data.split:SplitError",
    "medimg.data.prepare:PrepareError",
    "medimg.training.data:PreparedDataError",
    "medimg.tracking:TrackingError",
    "medimg.evaluation.evaluate_stage:EvaluateError",
    "medimg.predict_image:PredictError",
)


def _user_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ParamsError]
    for spec in _USER_ERRORS:
        module_name, name = spec.split(":")
        module = sys.modules.get(module_name)  # only modules the command imported
        if module is not None and hasattr(module, name):
            types.append(getattr(module, name))
    return tuple(types)


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _fetch(params: Params, args: argparse.Namespace) -> None:
    cfg = params.dataset(args.dataset)
    from medimg.data.fetch import fetch_dataset

    report = fetch_dataset(args.dataset, cfg)
    print(f"fetched {args.dataset}: {report.n_images} images, fingerprint {report.fingerprint}")
    _print_json(report.counts)


def _split(params: Params, args: argparse.Namespace) -> None:
    cfg = params.dataset(args.dataset)
    from medimg.data.split import split_dataset

    report = split_dataset(args.dataset, cfg)
    print(f"split {args.dataset} ({report['protocol']}, leaky={report['leaky']})")
    _print_json({k: report[k] for k in ("totals", "patient_overlap", "duplicate_overlap")})


def _augment(params: Params, args: argparse.Namespace) -> None:
    cfg = params.dataset(args.dataset)
    from medimg.data.prepare import prepare_dataset

    meta = prepare_dataset(args.dataset, cfg)
    print(f"prepared {args.dataset}")
    _print_json(meta["counts"])


def _train(params: Params, args: argparse.Namespace) -> None:
    params.run(args.run)
    from medimg.training.train_stage import run_train

    summary = run_train(params, args.run)
    print(f"trained {args.run}: parent MLflow run {summary['parent_run_id']}")


def _evaluate(params: Params, args: argparse.Namespace) -> None:
    params.run(args.run)
    from medimg.evaluation.evaluate_stage import run_evaluate

    metrics = run_evaluate(params, args.run)
    test = metrics.get("test", {})
    shown = {k: test[k] for k in ("accuracy", "roc_auc", "f1") if k in test}
    print(f"evaluated {args.run}")
    _print_json(shown)


def _predict(params: Params, args: argparse.Namespace) -> None:
    from medimg.predict_image import format_prediction, predict_image

    for image in args.images:
        ranked = predict_image(args.model, image)
        print(f"{image}: {format_prediction(ranked)}")


def _show_params(params: Params, args: argparse.Namespace) -> None:
    _print_json(params.model_dump(exclude={"profiles"}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medimg",
        description="Reproducible biomedical image classification: "
        "fetch -> split -> augment -> train -> evaluate (normally run through `dvc repro`).",
    )
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    add(
        "fetch", _fetch, "download or copy a dataset, check it, write data/raw/<dataset>/"
    ).add_argument("--dataset", required=True, help="a key of `datasets:` in params.yaml")
    add(
        "split", _split, "split a fetched dataset into train/val/test: data/splits/<dataset>/"
    ).add_argument("--dataset", required=True, help="a key of `datasets:` in params.yaml")
    add(
        "augment",
        _augment,
        "decode, resize and (optionally) augment into uint8 arrays: data/prepared/<dataset>/",
    ).add_argument("--dataset", required=True, help="a key of `datasets:` in params.yaml")
    add(
        "train", _train, "train one configuration `repeats` times, tracked in MLflow: models/<run>/"
    ).add_argument("--run", required=True, help="a key of `runs:` in params.yaml")
    add(
        "evaluate", _evaluate, "evaluate a trained configuration on val and test: reports/<run>/"
    ).add_argument("--run", required=True, help="a key of `runs:` in params.yaml")
    p = add("predict", _predict, "classify new images with a trained model")
    p.add_argument(
        "--model",
        required=True,
        type=Path,
        help="a models/<run>/seed-<k> folder or its model.keras",
    )
    p.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG)")
    add("params", _show_params, "validate params.yaml and print the effective values")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params)
        args.handler(params, args)
    except Exception as err:
        if isinstance(err, _user_error_types()):
            print(f"medimg {args.command}: error: {err}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
