"""`medimg`: one subcommand per pipeline stage, plus `predict` and `params`.

DVC calls the same code through the short scripts in stages/. Heavy imports
(Keras, MLflow) happen inside the subcommands, so `medimg fetch` and
`medimg --help` do not pay for them.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from medimg.config import PARAMS_FILE, Params, ParamsError, load_params

# Errors that mean "bad input or a stage run out of order": shown as one clear
# message without a traceback. Anything else is a bug and keeps its traceback.
_USER_ERRORS = (
    "medimg.config:ParamsError",
    "medimg.data.fetch:FetchError",
    "medimg.data.split:SplitError",
    "medimg.data.prepare:PrepareError",
    "medimg.data.prepared:PreparedDataError",
    "medimg.tracking:TrackingError",
    "medimg.evaluation.evaluate_stage:EvaluateError",
    "medimg.training.run_lock:RunLockedError",
    "medimg.training.checkpoints:ResumeStateError",
    "medimg.models.transfer:TransferError",
    "medimg.models.efficientnet:WeightsUnavailableError",
    "medimg.runner.results:ResultsError",
    "medimg.runner.bundle:BundleError",
    "medimg.inference.errors:PredictError",
    "medimg.team:StackError",
    "medimg.reporting:ReportError",
    "medimg.tuning.storage:TuneStorageError",
    "medimg.tuning.study:TuneStudyError",
)


# Subcommands that run without a params.yaml.
WITHOUT_PARAMS = ("predict", "stack")


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

    for protocol, report in split_dataset(args.dataset, cfg).items():
        print(f"split {args.dataset}/{protocol} (leaky={report['leaky']})")
        _print_json({k: report[k] for k in ("totals", "patient_overlap", "duplicate_overlap")})


def _augment(params: Params, args: argparse.Namespace) -> None:
    cfg = params.dataset(args.dataset)
    from medimg.data.prepare import prepare_dataset

    for protocol, meta in prepare_dataset(args.dataset, cfg).items():
        print(f"prepared {args.dataset}/{protocol}")
        _print_json(meta["counts"])


def _train(params: Params, args: argparse.Namespace) -> None:
    params.run(args.run)
    from medimg.training.train_stage import run_train

    summary = run_train(params, args.run)
    print(f"trained {args.run}: parent MLflow run {summary['parent_run_id']}")


def _positive(kind: type) -> Callable[[str], float]:
    """argparse type: a number of `kind` above 0 (the tune options)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


def _tune(params: Params, args: argparse.Namespace) -> None:
    params.study(args.study)
    from medimg.tuning.tune_stage import run_tune

    summary = run_tune(
        params, args.study, n_trials=args.n_trials, timeout_s=args.timeout, storage=args.storage
    )
    counts = summary["counts"]
    print(
        f"study {args.study} ({summary['storage_study']} in {summary['storage']}): "
        f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed; "
        f"best val {params.study(args.study).objective} {summary['best_value']:.4f} "
        f"(trial {summary['best_trial']}); MLflow study run {summary['parent_run_id']}"
    )
    for note in summary["notes"]:
        print(f"note: {note}")
    print("apply the best values as an ordinary 5-seed run:")
    print(f"  {summary['command']}")
    for key in summary["shadowed_by_profile"]:
        print(f"note: profile {params.profile!r} overrides {key}: edit it there instead")


def _evaluate(params: Params, args: argparse.Namespace) -> None:
    params.run(args.run)
    from medimg.evaluation.evaluate_stage import run_evaluate

    metrics = run_evaluate(params, args.run)
    test = metrics.get("test", {})
    shown = {k: test[k] for k in ("accuracy", "roc_auc", "f1") if k in test}
    print(f"evaluated {args.run}")
    _print_json(shown)


# `medimg predict`'s exit status when some inputs could not be classified (2 is taken by
# argparse and by user errors, where nothing was classified).
PREDICT_PARTLY_FAILED = 3


def _predict(params: Params | None, args: argparse.Namespace) -> int:
    import tempfile

    from medimg.atomic import write_file
    from medimg.inference.errors import PredictError
    from medimg.inference.predict import predict_inputs
    from medimg.inference.results import render

    if args.output is not None and not args.output.parent.is_dir():
        raise PredictError(
            f"--output {args.output}: the folder {args.output.parent} does not exist"
        )
    with tempfile.TemporaryDirectory(prefix="medimg-model-") as download_dir:
        run = predict_inputs(
            args.model,
            args.inputs,
            batch_size=args.batch_size,
            min_size=args.min_size,
            explain_dir=args.explain,
            explain_layer=args.explain_layer,
            download_dir=Path(download_dir),
        )
    text = render(run.results, run.classifier.classes, args.format, args.model)
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_file(args.output, text)
    failed = run.count("error")
    print(
        f"medimg predict: {run.count('ok')} classified, {failed} could not be classified, "
        f"{run.count('skipped')} skipped" + (f"; results in {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return PREDICT_PARTLY_FAILED if failed else 0


def _report(params: Params, args: argparse.Namespace) -> None:
    from medimg.reporting.report import write_report

    for path in write_report(params):
        print(f"wrote {path}")


def _stack(params: Params | None, args: argparse.Namespace) -> None:
    from medimg.team.stack import run_command

    run_command(args)


def _gpu_bundle(params: Params, args: argparse.Namespace) -> None:
    from medimg.runner.bundle import make_bundle

    info = make_bundle(args.params, params, args.runs, args.out)
    print(
        f"wrote {args.out} (bundle {info.bundle_id[:12]}, profile {info.profile}, "
        f"runs {', '.join(info.runs)})"
    )


def _import_results(params: Params, args: argparse.Namespace) -> None:
    from medimg.runner.importer import import_results

    for folder in args.folders:
        for run, parent in import_results(folder, params.tracking.experiment_prefix).items():
            print(f"{folder}: {run} -> MLflow parent run {parent}")


def _show_params(params: Params, args: argparse.Namespace) -> None:
    _print_json(params.model_dump(exclude={"profiles"}))


def _add_predict_arguments(p: argparse.ArgumentParser) -> None:
    from medimg.inference import DEFAULT_BATCH_SIZE, DEFAULT_MIN_SIZE, FORMATS

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "exit status:\n"
        "  0  every image was classified (non-image files found in folders are skipped\n"
        "     and listed)\n"
        "  2  bad arguments, model or output: nothing was classified\n"
        f"  {PREDICT_PARTLY_FAILED}  some inputs could not be classified: each is named with its\n"
        "     reason in the results, and every other image was classified"
    )
    p.add_argument(
        "--model",
        required=True,
        help="a models/<run>/seed-<k> folder, its model.keras, runs:/<run_id>/model, "
        "models:/<name>@<alias> (e.g. models:/medimg-chest_xray@champion) or "
        "models:/<name>/<version>, from the MLflow store of MLFLOW_TRACKING_URI",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE",
        help="image files (JPEG, PNG 8/16-bit, TIFF, BMP, DICOM .dcm), folders (searched "
        "recursively) or glob patterns (quoted, ** allowed)",
    )
    p.add_argument("--format", choices=FORMATS, default=FORMATS[0], help="default: %(default)s")
    p.add_argument("--output", type=Path, help="write the results to this file (default: stdout)")
    p.add_argument(
        "--min-size",
        type=int,
        help=f"refuse images whose shorter side is below this many pixels (default: "
        f"{DEFAULT_MIN_SIZE}, or the model's input size when smaller)",
    )
    p.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images classified together"
    )
    p.add_argument(
        "--explain",
        type=Path,
        metavar="DIR",
        help="write a Grad-CAM overlay PNG per classified image into DIR",
    )
    p.add_argument(
        "--explain-layer",
        metavar="LAYER",
        help="the layer Grad-CAM uses (default: the last 4-D layer of the model's backbone)",
    )


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
        "split",
        _split,
        "split a fetched dataset into train/val/test, per protocol: "
        "data/splits/<dataset>/<protocol>/",
    ).add_argument("--dataset", required=True, help="a key of `datasets:` in params.yaml")
    add(
        "augment",
        _augment,
        "decode, resize and (optionally) augment into uint8 arrays per protocol: "
        "data/prepared/<dataset>/<protocol>/",
    ).add_argument("--dataset", required=True, help="a key of `datasets:` in params.yaml")
    add(
        "train", _train, "train one configuration `repeats` times, tracked in MLflow: models/<run>/"
    ).add_argument("--run", required=True, help="a key of `runs:` in params.yaml")
    add(
        "evaluate", _evaluate, "evaluate a trained configuration on val and test: reports/<run>/"
    ).add_argument("--run", required=True, help="a key of `runs:` in params.yaml")
    _add_tune_arguments(
        add(
            "tune",
            _tune,
            "run an Optuna study over a run (one worker; start several to run trials in "
            "parallel): reports/tune/<study>/",
        )
    )
    _add_predict_arguments(add("predict", _predict, "classify new images with a trained model"))
    add(
        "report",
        _report,
        "the thesis's tables with ours beside them, from the runs in MLflow: "
        "reports/report.md and reports/report.html",
    )
    p = add(
        "gpu-bundle",
        _gpu_bundle,
        "pack params.yaml and the splits of some runs for the GPU runner (medimg.runner.run)",
    )
    p.add_argument("--runs", nargs="+", required=True, help="keys of `runs:` in params.yaml")
    p.add_argument("--out", type=Path, required=True, help="the bundle folder to write")
    add(
        "import-results",
        _import_results,
        "log results folders written by the GPU runner into the MLflow store",
    ).add_argument(
        "folders",
        nargs="+",
        type=Path,
        help="runner results folders or the .tar.gz a device call packs them in",
    )
    add("params", _show_params, "validate params.yaml and print the effective values")
    _add_stack_arguments(
        add("stack", _stack, "team mode: start, stop or show PostgreSQL + an MLflow server")
    )
    return parser


def _add_tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="a key of `tune:` in params.yaml")
    p.add_argument(
        "--n-trials",
        type=_positive(int),
        help="finished trials the study should have, all workers together "
        "(default: tune.<study>.n_trials)",
    )
    p.add_argument(
        "--timeout",
        type=_positive(float),
        help="seconds after which no trial starts (default: none)",
    )
    p.add_argument(
        "--storage",
        help="Optuna storage: a database URL or a journal file (default: $MEDIMG_OPTUNA_STORAGE, "
        "else optuna/journal.log)",
    )


def _add_stack_arguments(p: argparse.ArgumentParser) -> None:
    """Written here, not imported from medimg.team: every stage imports this module, and
    DVC would re-run the whole pipeline after each change of the team stack's code."""
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument(
        "--dir",
        type=Path,
        help="the stack's folder: cluster, logs, artifacts (default: .medimg-stack)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address both servers listen on and workers connect to: 127.0.0.1, or a "
        "private LAN address, which opens them to the LAN (read docs/team.md first)",
    )
    p.add_argument("--port-pg", type=int, default=5432, help="PostgreSQL's port (default: 5432)")
    p.add_argument("--port-mlflow", type=int, default=5000, help="MLflow's port (default: 5000)")
    p.add_argument(
        "--artifacts-destination",
        help="where the tracking server stores artifacts: a folder or s3://bucket/prefix "
        "(default: <dir>/artifacts); fixed at the first start",
    )
    p.add_argument(
        "--pg-bin", type=Path, help="PostgreSQL's binaries (default: /usr/lib/postgresql/15/bin)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # medimg's notes (e.g. stage timings, kept out of DVC outputs) go to stderr, one line
    # each; other libraries stay at their warnings.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("medimg").setLevel(logging.INFO)
    try:
        # predict and the team stack need no params.yaml (a clinician's machine, a server).
        params = None if args.command in WITHOUT_PARAMS else load_params(args.params)
        return args.handler(params, args) or 0
    except Exception as err:
        if isinstance(err, _user_error_types()):
            print(f"medimg {args.command}: error: {err}", file=sys.stderr)
            return 2
        raise


def run_stage(argv: Sequence[str]) -> NoReturn:
    """A DVC stage's process (stages/*.py): `main(argv)`, then exit without the teardown.

    Tearing down an interpreter that has TensorFlow and MLflow loaded takes longer
    than many of the sample's stages take to work: 1.5 s after `import keras, mlflow`
    alone, 3.5 to 4 s between a train stage's last line and DVC's next step (this
    2-core CPU). It is the interpreter finalising every module and object, and the
    ~30 stages of `make run` pay it one after the other. When main has returned,
    everything the stage writes is closed and renamed into place (atomic.py), so
    the process ends the way the interpreter would, minus that: the threading
    module's shutdown (which tells thread pools to stop, then joins the non-daemon
    threads), the exit handlers (logging's flush, MLflow's, temporary folders'),
    the standard streams' flush, then `os._exit`. An exception still leaves
    through the normal path, with its traceback.
    """
    code = main(argv)
    # The two calls CPython's own finalisation makes first, in its order. Both are
    # private; a hand-written join instead hung on idle thread-pool workers, which
    # only threading's shutdown callbacks release.
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
