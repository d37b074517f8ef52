"""There: train chosen runs of a bundle on a machine without MLflow, DVC or network.

    KERAS_BACKEND=jax python -m medimg.runner.run --bundle gpu/bundle \\
        --archive chest_xray=gpu/chest_xray_224.zip --runs xray_cnn xray_cnn_aug \\
        --seeds 0 1 2 --budget-s 420 --precision float32 --out "$OUT/results"

For each dataset the runs need: unpack the archive in fetch's layout, decode and
resize the images with the augment stage's own code, for the bundle's splits.
Then for each run and seed: fit_one_seed (the pipeline's training function), the
val and test metrics of the best checkpoint, figures, predictions, timings: the
files of medimg.runner.results. A seed that would start after `--budget-s` is
listed as left for the next call, so each call ends inside its device time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medimg import atomic
from medimg.config.datasets import DatasetConfig
from medimg.config.params import Params, load_params
from medimg.config.runs import RunConfig
from medimg.data.archive import ZipArchive
from medimg.data.layouts import match_layout
from medimg.evaluation.predictions import PREDICTIONS_FILE
from medimg.runner.results import (
    BUNDLE_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    RUN_FILE,
    SEED_FILE,
    SEED_METRICS_FILE,
    BundleInfo,
    ResultsError,
    RunnerManifest,
    RunRecord,
    SeedRecord,
    read_record,
    write_record,
)

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def unpack_archive(archive: Path, cfg: DatasetConfig, raw: Path) -> None:
    """Extract the images of `archive` into `raw` in the fetch stage's layout
    (images/<source split>/<label>/<file>), which the split files refer to."""
    with ZipArchive(archive) as tree:
        match = match_layout(tree.files, cfg.layout, cfg.classes)
        for entry in match.entries:
            target = raw / entry.target
            target.parent.mkdir(parents=True, exist_ok=True)
            with tree.open(entry.source) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def prepare_for_runs(
    params: Params, runs: list[str], bundle: Path, archives: dict[str, Path], scratch: Path
) -> dict[str, float]:
    """Unpack and prepare every (dataset, protocol) the runs need; returns seconds per dataset."""
    from medimg.data.prepare import prepare_dataset

    seconds = {}
    for dataset in sorted({params.runs[r].dataset for r in runs}):
        if dataset not in archives:
            raise ResultsError(f"runs {runs} need dataset {dataset!r}: pass --archive {dataset}=")
        started = time.perf_counter()
        cfg = params.datasets[dataset]
        protocols = sorted(
            {params.runs[r].split_protocol for r in runs if params.runs[r].dataset == dataset}
        )
        cfg = cfg.model_copy(
            update={
                "split": cfg.split.model_copy(update={"protocols": protocols}),
                "prepare": cfg.prepare.model_copy(update={"workers": os.cpu_count() or 1}),
            }
        )
        unpack_archive(archives[dataset], cfg, scratch / "raw" / dataset)
        prepare_dataset(
            dataset,
            cfg,
            raw=scratch / "raw" / dataset,
            splits=bundle / "splits" / dataset,
            dest=scratch / "prepared" / dataset,
        )
        seconds[dataset] = round(time.perf_counter() - started, 1)
    return seconds


def _run_record(params: Params, name: str, meta: dict) -> RunRecord:
    run = params.runs[name]
    dataset = params.datasets[run.dataset]
    return RunRecord(
        run=name,
        dataset=run.dataset,
        split_protocol=run.split_protocol,
        classes=list(dataset.classes),
        config=run.model_dump(mode="json"),
        model_options=run.options().model_dump(mode="json"),
        prepare=dataset.prepare.model_dump(mode="json"),
        split=dataset.split.model_dump(mode="json"),
        data_meta=meta,
    )


def train_and_evaluate_seed(run: RunConfig, data, work: Path, seed: int, out: Path) -> None:
    """fit_one_seed, then the val/test metrics and figures of its best checkpoint, into `out`
    (written whole or not at all)."""
    from medimg.evaluation import figures
    from medimg.evaluation.metrics import roc_points, scalar_metrics
    from medimg.evaluation.predictions import data_fingerprint, predict_splits, save_predictions
    from medimg.evaluation.seed_evaluation import evaluate_predictions, save_test_predictions
    from medimg.evaluation.test_predictions import TEST_PREDICTIONS_FILE, prepared_test_paths
    from medimg.models.saved import load_model
    from medimg.training.fit import fit_one_seed

    fit = fit_one_seed(run, data, work, seed)
    predictions = predict_splits(load_model(fit.model_path), data)
    metrics = evaluate_predictions(predictions, data.classes, run.decision_threshold)
    with atomic.building(out) as staging:
        save_predictions(staging / PREDICTIONS_FILE, predictions, data_fingerprint(data))
        save_test_predictions(
            staging / TEST_PREDICTIONS_FILE,
            predictions,
            data.classes,
            run.decision_threshold,
            prepared_test_paths(data.directory, predictions.y["test"], data.classes),
        )
        (staging / SEED_METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=float))
        shutil.copy2(work / f"seed-{seed}" / HISTORY_FILE, staging / HISTORY_FILE)
        figures.save_confusion_matrix(
            np.array(metrics["test"]["confusion_matrix"]),
            data.classes,
            staging / "confusion_test.png",
            title=f"test, seed {seed}",
        )
        figures.save_roc_curves(
            roc_points(predictions.y["test"], predictions.proba["test"], data.classes),
            metrics["test"],
            staging / "roc_test.png",
            title=f"ROC, test, seed {seed}",
        )
        figures.save_training_curves(
            {seed: pd.read_csv(staging / HISTORY_FILE)}, staging / "training_curves.png"
        )
        write_record(
            staging / SEED_FILE,
            SeedRecord(
                seed=seed,
                best_epoch=fit.best_epoch,
                best_monitor=fit.best_monitor,
                best_train_accuracy=fit.best_values(["accuracy"]).get(
                    "best_accuracy", float("nan")
                ),
                epochs_run=fit.epochs_run,
                train_seconds=fit.train_seconds,
                images_per_second=fit.images_per_second,
                val=scalar_metrics(metrics["val"]),
                test=scalar_metrics(metrics["test"]),
            ),
        )


def _sha256(path: Path) -> str:
    if not path.is_file():
        raise ResultsError(f"{path}: archive not found")
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="made by medimg gpu-bundle")
    parser.add_argument(
        "--archive",
        action="append",
        default=[],
        metavar="DATASET=ZIP",
        help="the dataset's archive, laid out as its public download",
    )
    parser.add_argument("--runs", nargs="+", required=True, help="keys of runs: in the bundle")
    parser.add_argument("--seeds", type=int, nargs="*", help="default: each run's own seeds")
    parser.add_argument(
        "--budget-s", type=float, default=float("inf"), help="start no seed after this many seconds"
    )
    parser.add_argument("--precision", default="float32", choices=PRECISIONS)
    parser.add_argument("--out", type=Path, required=True, help="results folder (e.g. $OUT/x)")
    parser.add_argument("--scratch", type=Path, help="where data is unpacked (default: tmp)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    started = time.perf_counter()
    bundle = read_record(args.bundle / BUNDLE_FILE, BundleInfo)
    params = load_params(args.bundle / "params.yaml")
    unknown = sorted(set(args.runs) - set(bundle.runs))
    if unknown:
        raise ResultsError(f"run(s) {unknown} are not in the bundle; it has {bundle.runs}")
    archives = {}
    for item in args.archive:
        dataset, _, path = item.partition("=")
        archives[dataset] = Path(path)

    import keras

    from medimg.data.prepared import load_prepared
    from medimg.device import device_name

    keras.mixed_precision.set_global_policy(args.precision)
    manifest = RunnerManifest(
        bundle_id=bundle.bundle_id,
        profile=bundle.profile,
        git_commit=bundle.git_commit,
        device=device_name(),
        backend=keras.backend.backend(),
        precision=args.precision,
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        command=shlex.join([sys.executable, "-m", "medimg.runner.run", *(argv or sys.argv[1:])]),
        archives={d: f"{p.name} {_sha256(p)}" for d, p in archives.items()},
    )
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        scratch = Path(tmp)
        manifest.prepare_seconds = prepare_for_runs(
            params, args.runs, args.bundle, archives, scratch
        )
        write_record(args.out / MANIFEST_FILE, manifest)
        for name in args.runs:
            run = params.runs[name]
            data = load_prepared(scratch / "prepared" / run.dataset / run.split_protocol)
            (args.out / name).mkdir(exist_ok=True)
            write_record(args.out / name / RUN_FILE, _run_record(params, name, data.meta))
            for seed in args.seeds if args.seeds is not None else run.seeds():
                if time.perf_counter() - started > args.budget_s:
                    manifest.left.setdefault(name, []).append(seed)
                    continue
                train_and_evaluate_seed(
                    run, data, scratch / "work" / name, seed, args.out / name / f"seed-{seed}"
                )
                manifest.done.setdefault(name, []).append(seed)
                write_record(args.out / MANIFEST_FILE, manifest)
    manifest.finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_record(args.out / MANIFEST_FILE, manifest)
    print(f"done {manifest.done}; left {manifest.left}; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
