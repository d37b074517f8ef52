"""Several trainings writing one sqlite MLflow store at once (`dvc queue start -j N`).

    python benchmarks/mlflow_sqlite_writers.py [--processes 2 4] [--seeds 2] [--epochs 40]
        [--epoch-s 0] [--repeats 3] [--fresh | --existing]

Each process does what one train stage does to the store, through the same medimg
functions where there are some: store.ensure_reachable and get_or_create_experiment,
a parent run (mlflow.start_run) with ~60 params, one nested child run per seed with its
params, one log_batch of 8 metrics per epoch (as medimg.training.mlflow_logger does), an
artifact, a logged model (initialize/finalize, no Keras: its files do not touch the
database), the aggregates on the parent, and model_registry.register_best. All processes
start at the same instant; with --epoch-s 0 (the default) they write as fast as they can,
the most a queue of tiny trainings asks; a real epoch takes seconds.

--fresh (the default): the store does not exist yet, so the processes also race to
create its tables (a fresh clone whose first trainings are queued experiments);
--existing: it is created first (after `make run`).

Printed per cell (median over --repeats): wall seconds, processes that failed, the
errors they raised (first line, counted), and the store's state afterwards: runs not
FINISHED, children whose epoch curve misses steps, registered versions (must be
processes x 1, numbered 1..N without gaps or repeats).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

MODEL = "medimg-bench"
METRICS = ("loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc", "lr", "seconds")


def _training(uri: str, index: int, seeds: int, epochs: int, epoch_s: float, start_at: float):
    """One train stage's writes; returns None, or the first line of the error it raised."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from medimg.tracking import model_registry, store

    os.environ["MLFLOW_TRACKING_URI"] = uri
    time.sleep(max(0.0, start_at - time.time()))
    try:
        store.ensure_reachable(uri, experiment="medimg-bench")
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        experiment_id = store.get_or_create_experiment(client, "medimg-bench")
        params = {f"run.option_{k}": str(k) for k in range(60)}
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"run-{index}"):
            mlflow.log_params(params)
            for seed in range(seeds):
                with mlflow.start_run(
                    experiment_id=experiment_id, run_name=f"run-{index}/seed-{seed}", nested=True
                ) as child:
                    mlflow.log_params({**params, "seed": str(seed)})
                    for epoch in range(1, epochs + 1):
                        now = int(time.time() * 1000)
                        batch = [Metric(f"epoch_{m}", 0.5, now, epoch) for m in METRICS]
                        client.log_batch(child.info.run_id, metrics=batch)
                        time.sleep(epoch_s)
                    mlflow.log_metrics({"best_val_auc": 0.5 + index / 100})
                    with tempfile.TemporaryDirectory() as folder:
                        history = Path(folder) / "history.csv"
                        history.write_text("epoch,loss\n1,0.5\n")
                        mlflow.log_artifact(str(history))
                    model = mlflow.initialize_logged_model(name="model")
                    mlflow.finalize_logged_model(model.model_id, "READY")
            mlflow.log_metrics({"best_val_auc_mean": 0.5})
            auc = 0.5 + index / 100
            model_registry.register_best(
                client, model.model_id, child.info.run_id, MODEL, f"run-{index}", 0, auc
            )
        return None
    except Exception as err:  # counted and printed: what a stage would have died of
        lines = traceback.format_exception_only(err)[-1].strip().splitlines()
        return f"{type(err).__name__}: {lines[0][:160]}"


def _check_store(uri: str, processes: int, seeds: int, epochs: int) -> dict[str, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("medimg-bench")
    found = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    children = [r for r in found if "/seed-" in r.info.run_name]
    short = sum(
        len(client.get_metric_history(r.info.run_id, "epoch_val_auc")) != epochs for r in children
    )
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))
    except Exception:  # no registered model at all
        versions = []
    return {
        "runs": len(found),
        "runs_expected": processes * (1 + seeds),
        "not_finished": sum(r.info.status != "FINISHED" for r in found),
        "short_curves": short,
        "versions_ok": versions == list(range(1, processes + 1)),
        "versions": versions,
    }


def _cell(args: argparse.Namespace, processes: int) -> dict[str, Any]:
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="medimg-sqlite-writers-") as folder:
        (Path(folder) / "mlruns").mkdir()
        uri = f"sqlite:///{Path(folder) / 'mlruns' / 'mlflow.db'}"
        if not args.fresh:
            MlflowClient(uri).search_experiments()  # creates the tables
        start_at = time.time() + 8  # every process imported MLflow by then
        jobs = [(uri, i, args.seeds, args.epochs, args.epoch_s, start_at) for i in range(processes)]
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            errors = pool.starmap(_training, jobs)
        wall = time.time() - start_at
        return {
            "wall_s": wall,
            "errors": [e for e in errors if e],
            **_check_store(uri, processes, args.seeds, args.epochs),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--epoch-s", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=3)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--fresh", dest="fresh", action="store_true", default=True)
    group.add_argument("--existing", dest="fresh", action="store_false")
    parser.add_argument("--json", type=Path, help="also write the cells here")
    args = parser.parse_args()
    cells = []
    for processes in args.processes:
        runs = [_cell(args, processes) for _ in range(args.repeats)]
        errors = Counter(e for run in runs for e in run["errors"])
        cell = {
            "processes": processes,
            "store": "fresh" if args.fresh else "existing",
            "wall_s_median": statistics.median(r["wall_s"] for r in runs),
            "failed_processes": [len(r["errors"]) for r in runs],
            "errors": dict(errors),
            "not_finished_runs": [r["not_finished"] for r in runs],
            "missing_runs": [r["runs_expected"] - r["runs"] for r in runs],
            "short_curves": [r["short_curves"] for r in runs],
            "versions_ok": [r["versions_ok"] for r in runs],
        }
        cells.append(cell)
        print(json.dumps(cell), flush=True)
    if args.json:
        args.json.write_text(json.dumps(cells, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
