"""An Optuna study over a research variant: `medimg tune` on a profile's data with some
settings changed, in research.py's scratch folder; the trials are written to
docs/research/<name>.json.

    python benchmarks/research_study.py --name mri64_study --run mri_cnn \\
        --set image_size=64 --set batch_norm_statistics=clean \\
        --dataset-set prepare.normalize=equalize \\
        --study-set objective=accuracy --study-set n_trials=12 \\
        --space 'learning_rate={low: 3.0e-4, high: 3.0e-3, log: true}' \\
        --space 'batch_size={choices: [16, 32, 64]}'

The study is the pipeline's own (`medimg tune`, the same trials, pruning, storage and
MLflow records as the tune stage), so a stopped study resumes on the next call. It
tunes on the validation split only; the test split is read by nobody here. Confirm
the best values with research.py over several seeds, as for any variant.
"""

from __future__ import annotations

import argparse
import csv
import json

import yaml

from medimg.config.params import parse_params

# research.py, beside this script (python puts the script's folder on sys.path)
from research import (
    add_variant_arguments,
    effective_params,
    open_workspace,
    parse_settings,
    record_header,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_variant_arguments(parser)
    parser.add_argument(
        "--study-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a key of the study's tune: entry, e.g. objective=accuracy or n_trials=12",
    )
    parser.add_argument(
        "--space",
        action="append",
        required=True,
        metavar="KEY=DIMENSION",
        help="a dotted run key and its range, e.g. 'model_options.dropout={low: 0, high: 0.5}'",
    )
    args = parser.parse_args()
    args.seeds = 1  # a trial's seeds are the study's `repeats`, not the run's

    raw, key = effective_params(args)
    raw["tune"] = {
        args.name: {
            "run": key,
            **parse_settings(args.study_set),
            "space": parse_settings(args.space),
        }
    }
    parse_params(raw)  # a bad study or space entry fails here, naming the key
    dataset = raw["runs"][key]["dataset"]
    space = open_workspace(raw, dataset, args.name, args.scratch, args.out)
    seconds = space.medimg(["tune", "--study", args.name])

    reports = space.root / "reports" / "tune" / args.name
    best = yaml.safe_load((reports / "best_params.yaml").read_text())
    with open(reports / "trials.csv", newline="") as f:
        trials = list(csv.DictReader(f))
    record = {
        **record_header(args),
        "study": raw["tune"][args.name],
        "seconds": round(seconds, 1),
        "best": best,
        "trials": trials,
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.name}: best {best}")


if __name__ == "__main__":
    main()
