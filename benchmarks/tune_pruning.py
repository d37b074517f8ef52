"""Epochs trained and best value reached by one study with its pruner and without one.

    python benchmarks/tune_pruning.py --prepared data/prepared/chest_xray/official \\
        --study xray_cnn_search --trials 8

Runs the study of params.yaml twice, as `medimg tune` would (run_tune: the same
training code, a real journal storage and sqlite MLflow store), each time in a fresh
temporary project root holding a copy of the prepared arrays: once with the study's
pruner, once with `pruner: none`. Same seed, same number of trials: the sampler draws
the same values in both while TPE is still in its random start-up trials (10 by
default), so the two differ only by what pruning stopped. Prints one row per variant.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml


def _run_variant(raw: dict, study: str, prepared: Path, dataset: str, protocol: str) -> dict:
    """One study in a fresh root; returns its trial counts, epochs and best value."""
    from medimg.config.params import parse_params
    from medimg.tuning.tune_stage import run_tune

    with tempfile.TemporaryDirectory(prefix="medimg-tune-bench-") as folder:
        root = Path(folder)
        shutil.copytree(prepared, root / "data" / "prepared" / dataset / protocol)
        os.environ["MEDIMG_ROOT"] = str(root)
        started = time.perf_counter()
        summary = run_tune(parse_params(raw).study_settings(study))
        seconds = time.perf_counter() - started
    return {**summary, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--study", default="xray_cnn_search")
    parser.add_argument("--prepared", type=Path, required=True, help="a prepared_dir to copy")
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # each variant's own sqlite store
    os.environ.pop("MEDIMG_OPTUNA_STORAGE", None)  # and its own journal file
    from medimg.config.params import load_params

    params = load_params(args.params)
    run = params.run(params.study(args.study).run)
    raw = yaml.safe_load(args.params.read_text())
    raw["tune"][args.study]["n_trials"] = args.trials
    pruned = yaml.safe_load(yaml.safe_dump(raw))
    unpruned = yaml.safe_load(yaml.safe_dump(raw))
    unpruned["tune"][args.study]["pruner"] = {"name": "none"}
    rows = []
    for name, variant in (("pruner of params.yaml", pruned), ("no pruner", unpruned)):
        result = _run_variant(variant, args.study, args.prepared, run.dataset, run.split_protocol)
        rows.append((name, result))

    import keras

    print(
        f"study {args.study}, {args.trials} trials, sampler seed "
        f"{params.study(args.study).sampler.seed}, Keras backend {keras.backend.backend()}"
    )
    print("| variant | complete | pruned | epochs trained | best val value | best trial | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows:
        print(
            f"| {name} | {r['complete']} | {r['pruned']} | {r['epochs_trained']} | "
            f"{r['best_value']:.4f} | {r['best_trial']} | {r['seconds']:.0f} |"
        )
    with_pruning, without = rows[0][1], rows[1][1]
    ratio = with_pruning["epochs_trained"] / without["epochs_trained"]
    print(
        f"epochs with / without pruning: {with_pruning['epochs_trained']} / "
        f"{without['epochs_trained']} = {ratio:.2f}"
    )


if __name__ == "__main__":
    main()
