"""Each run's training and prediction speed under a profile, and the profile's estimated time.

    python benchmarks/profile_throughput.py --profile cpu-check \\
        --prepared <a workspace where the profile's augment stages ran> \\
        --data-stages-s <seconds fetch, split and augment took there> \\
        --out docs/results/cpu-check/throughput.json

For every run of the profile, and each study's confirmation (its run with the study's
largest image size), the classifier is built as the train stage builds it
(medimg.training.fit.build_classifier and compile_classifier, augmentation included)
and trained with the run's batch size on random uint8 images of the prepared size,
then predicts them: images per second, the median of --repeats timed blocks of
--steps steps after one warm-up block (random pixels: speed does not depend on them).
The image counts per split come from the prepared data's meta.json.

The estimate of a run: repeats x (epochs x (train / train speed + val / predict speed)
+ (val + test) / predict speed + SEED_OVERHEAD_S) + STAGE_OVERHEAD_S per stage process;
of a study: its timeout (no trial starts after it) plus one trial; plus the data stages
as timed (--data-stages-s). Written to --out as JSON, which
tests/test_cpu_check_profile.py holds against the profile's budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

# Per stage process, measured on the sample (make run): importing TensorFlow and MLflow,
# tracing, opening the store, DVC's own bookkeeping.
STAGE_OVERHEAD_S = 25.0
# Per seed, beyond its images: building and tracing the model, checkpoints, the evaluation's
# plots and MLflow logging. Measured: a 15-epoch MRI seed at 64 px took 264 s in the
# train stage against 217 s from its images alone.
SEED_OVERHEAD_S = 45.0


def _counts(prepared: Path, dataset: str, protocol: str) -> dict[str, int]:
    meta = json.loads((prepared / "data/prepared" / dataset / protocol / "meta.json").read_text())
    return {split: sum(meta["counts"][split].values()) for split in ("train", "val", "test")}


def _speeds(run: Any, image_size: int, channels: int, classes: int, args) -> dict[str, float]:
    """(train, predict) images per second of `run`'s classifier on random pixels."""
    import keras

    from medimg.training.classifier import choose_augmentation_site
    from medimg.training.fit import build_classifier, compile_classifier

    in_model = choose_augmentation_site(run.augmentation, keras.backend.backend()) == "model"
    model = build_classifier(run, (image_size, image_size, channels), classes, in_model)
    compile_classifier(model, run, classes, run.learning_rate)
    rng = np.random.default_rng(0)
    batch = run.batch_size
    x = rng.integers(0, 256, (batch, image_size, image_size, channels), dtype=np.uint8)
    y = rng.integers(0, classes, batch).astype("float32" if classes == 2 else "int32")

    def timed(step) -> list[float]:
        step()  # warm-up: tracing
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds.append(time.perf_counter() - started)
        return seconds

    train = timed(lambda: model.train_on_batch(x, y))
    predict = timed(lambda: model.predict_on_batch(x))
    per_block = batch * args.steps
    return {
        "train_images_per_second": per_block / statistics.median(train),
        "predict_images_per_second": per_block / statistics.median(predict),
    }


def _estimate(run: Any, counts: dict[str, int], speeds: dict[str, float]) -> float:
    train, predict = speeds["train_images_per_second"], speeds["predict_images_per_second"]
    per_epoch = counts["train"] / train + counts["val"] / predict
    per_seed = run.epochs * per_epoch + (counts["val"] + counts["test"]) / predict
    per_seed += SEED_OVERHEAD_S
    return run.repeats * per_seed + 2 * STAGE_OVERHEAD_S  # its train and evaluate stages


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from medimg.config.base import read_yaml
    from medimg.config.params import parse_params
    from medimg.tuning.confirm import confirmation_name

    params = parse_params({**read_yaml(args.params), "profile": args.profile}, args.params)
    runs: dict[str, dict[str, Any]] = {}
    targets = {name: run for name, run in params.runs.items()}
    for name, study in params.tune.items():
        base = params.run(study.run)
        sizes = (
            [v for _, v in study.space["image_size"].candidates()]
            if "image_size" in study.space
            else [base.image_size]
        )
        biggest = max((s for s in sizes if s), default=None)
        targets[confirmation_name(name)] = base.model_copy(
            update={"repeats": study.confirm_repeats, "image_size": biggest}
        )
    for name, run in targets.items():
        dataset = params.dataset(run.dataset)
        size = run.input_size(dataset.prepare.image_size)
        counts = _counts(args.prepared, run.dataset, run.split_protocol)
        speeds = _speeds(
            run, dataset.prepare.image_size, dataset.channels, len(dataset.classes), args
        )
        runs[name] = {
            "model": run.model,
            "image_size": size,
            "batch_size": run.batch_size,
            "epochs": run.epochs,
            "repeats": run.repeats,
            **counts,
            **{k: round(v, 1) for k, v in speeds.items()},
            "estimated_s": round(_estimate(run, counts, speeds)),
        }
        print(f"{name}: {runs[name]}", flush=True)
    studies = {}
    for name, study in params.tune.items():
        trial = runs[confirmation_name(name)]["estimated_s"] / max(1, study.confirm_repeats)
        bound = (study.timeout_s or trial * study.n_trials) + trial + STAGE_OVERHEAD_S
        studies[name] = {
            "n_trials": study.n_trials,
            "timeout_s": study.timeout_s,
            "estimated_s": round(bound),
        }
    total = (
        args.data_stages_s
        + sum(r["estimated_s"] for r in runs.values())
        + sum(s["estimated_s"] for s in studies.values())
    )
    return {
        "profile": args.profile,
        "measured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": os.getloadavg(),
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "method": __doc__.split("\n\n", 2)[2].strip(),
        "stage_overhead_s": STAGE_OVERHEAD_S,
        "seed_overhead_s": SEED_OVERHEAD_S,
        "data_stages_s": args.data_stages_s,
        "runs": runs,
        "studies": studies,
        "estimated_total_s": round(total),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--profile", default="cpu-check")
    parser.add_argument(
        "--prepared", type=Path, required=True, help="a root holding data/prepared/"
    )
    parser.add_argument(
        "--data-stages-s",
        type=float,
        required=True,
        help="the measured wall time of the profile's fetch, split and augment stages",
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    table = measure(args)
    text = json.dumps(table, indent=1) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(
        f"estimated total: {table['estimated_total_s'] / 3600:.2f} h (load {table['load_average']})"
    )


if __name__ == "__main__":
    main()
