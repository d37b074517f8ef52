"""`medimg predict`: classify new images with a trained or registered model."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from medimg.commands.base import Command

# Exit status when some inputs could not be classified (2 is taken by argparse and by
# user errors, where nothing was classified).
PREDICT_PARTLY_FAILED = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medimg.inference import DEFAULT_BATCH_SIZE, DEFAULT_MIN_SIZE, FORMATS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "exit status:\n"
        "  0  every image was classified (non-image files found in folders are skipped\n"
        "     and listed)\n"
        "  2  bad arguments, model or output: nothing was classified\n"
        f"  {PREDICT_PARTLY_FAILED}  some inputs could not be classified: each is named with its\n"
        "     reason in the results, and every other image was classified"
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a models/<run>/seed-<k> folder, its model.keras, runs:/<run_id>/model, "
        "models:/<name>@<alias> (e.g. models:/medimg-chest_xray@champion) or "
        "models:/<name>/<version>, from the project's MLflow store (MLFLOW_TRACKING_URI "
        "when set)",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE",
        help="image files (JPEG, PNG 8/16-bit, TIFF, BMP, DICOM .dcm), folders (searched "
        "recursively) or glob patterns (quoted, ** allowed)",
    )
    parser.add_argument(
        "--format", choices=FORMATS, default=FORMATS[0], help="default: %(default)s"
    )
    parser.add_argument(
        "--output", type=Path, help="write the results to this file (default: stdout)"
    )
    parser.add_argument(
        "--min-size",
        type=int,
        help=f"refuse images whose shorter side is below this many pixels (default: "
        f"{DEFAULT_MIN_SIZE}, or the model's input size when smaller)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images classified together"
    )
    parser.add_argument(
        "--explain",
        type=Path,
        metavar="DIR",
        help="write a Grad-CAM overlay PNG per classified image into DIR",
    )
    parser.add_argument(
        "--explain-layer",
        metavar="LAYER",
        help="the layer Grad-CAM uses (default: the last 4-D layer of the model's backbone)",
    )


def run(args: argparse.Namespace) -> int:
    from medimg.atomic import write_file
    from medimg.inference.errors import PredictError
    from medimg.inference.predict import predict_inputs
    from medimg.inference.results import render

    if args.output is not None and not args.output.parent.is_dir():
        raise PredictError(
            f"--output {args.output}: the folder {args.output.parent} does not exist"
        )
    with tempfile.TemporaryDirectory(prefix="medimg-model-") as download_dir:
        prediction = predict_inputs(
            args.model,
            args.inputs,
            batch_size=args.batch_size,
            min_size=args.min_size,
            explain_dir=args.explain,
            explain_layer=args.explain_layer,
            download_dir=Path(download_dir),
        )
    text = render(prediction.results, prediction.classifier.classes, args.format, args.model)
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_file(args.output, text)
    failed = prediction.count("error")
    print(
        f"medimg predict: {prediction.count('ok')} classified, {failed} could not be "
        f"classified, {prediction.count('skipped')} skipped"
        + (f"; results in {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return PREDICT_PARTLY_FAILED if failed else 0


COMMAND = Command("predict", "classify new images with a trained model", add_arguments, run)
