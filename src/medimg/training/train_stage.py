"""The train stage: every seed of one configuration, tracked in MLflow, written to models/<run>/.

One parent MLflow run per configuration, one nested child run per seed. Training
state (checkpoints, run ids, finished seeds) lives in paths.work_dir(run), which
DVC does not delete, so an interrupted stage resumes: finished seeds are not
trained again and an interrupted seed continues its own child run.
models/<run>/ is built beside its final place and moved in only when complete;
then the work folder is removed whole (renamed aside first), so a kill at any
instant leaves either the whole state or none of it.

Everything recorded in the work folder about MLflow (run ids, a seed's result, the
registration) is checked against the store before it is reused: a run that is
gone (deleted, or another store) or belongs to another parent is never written
into again; the training state is logged into new runs instead. Each step of a
metric, each logged model and each registry version is made once per run, however
often the stage is killed and run again.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from medimg import atomic, paths
from medimg.config.runs import RunConfig, RunSettings
from medimg.data.prepared import PreparedData, PreparedDataError, load_prepared
from medimg.errors import UserError
from medimg.evaluation.predictions import (
    PREDICTIONS_FILE,
    data_fingerprint,
    predict_splits,
    save_predictions,
)
from medimg.evaluation.statistics import summarize
from medimg.inference.pyfunc import log_classifier_model
from medimg.models.options import weights_kind
from medimg.models.saved import load_model
from medimg.tracking import batch, model_registry, runs, store
from medimg.training import mlflow_logger
from medimg.training.checkpoints import save_model_atomically
from medimg.training.fit import fit_one_seed
from medimg.training.run_lock import exclusive_run

log = logging.getLogger(__name__)

# meta.json keys read here beyond those load_prepared checks.
REQUIRED_META_KEYS = ("source_fingerprint", "aspect")
VAL_METRICS = ("val_auc", "val_accuracy", "val_loss")
# Logged to each child run besides best_<val metric>.
SEED_METRICS = ("best_epoch", "best_train_accuracy", "train_seconds", "images_per_second")
INPUT_EXAMPLE_IMAGES = 3
PREPROCESSING_INPUT = "uint8 0-255 pixels, shape (batch, H, W, C); the model rescales"
# The name medimg.inference.pyfunc.log_classifier_model logs each seed's model under.
LOGGED_MODEL_NAME = "model"
# The work folder's records (paths.work_dir(run)).
PARENT_ID_FILE = "parent.mlflow_run_id"
WORK_ID_FILE = "work_id"  # the random id of this training state: runs.WORK_TAG
REGISTERED_FILE = "registered.json"


def _write_json(path: Path, obj: Any) -> None:
    atomic.write_file(path, json.dumps(obj, indent=2) + "\n")


def _history_frame(history: dict[str, list[float]]) -> pd.DataFrame:
    """One row per epoch: epoch (1-based) then every history column."""
    frame = pd.DataFrame(history)
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    return frame


def _fit_or_reuse(
    run: RunConfig, data: PreparedData, work: Path, seed: int, logger: Any
) -> dict[str, Any]:
    """Train the seed (resuming if it was interrupted) unless its training finished before.

    The training's result is written to work/seed-<seed>.fit.json before anything is
    logged, so that a failure while logging (an artifact store that cannot be
    written, a server restart) is followed by logging again, not by training again.
    """
    fit_file = work / f"seed-{seed}.fit.json"
    if fit_file.is_file():
        log.info("seed %d: training finished earlier, logging it again from %s", seed, fit_file)
        return json.loads(fit_file.read_text())
    fit = fit_one_seed(run, data, work, seed, callbacks=[logger])
    # Without its compile state: the saved and logged model then loads with plain
    # Keras, without medimg's custom training metric registered.
    exported = work / f"seed-{seed}.model.keras"  # beside seed-<seed>/, which a fresh start empties
    model = load_model(fit.model_path)
    save_model_atomically(model, exported)
    _save_predictions(model, data, _predictions_file(work, seed))
    result = {
        "seed": seed,
        "best_epoch": fit.best_epoch,
        **fit.best_values(VAL_METRICS),
        "best_train_accuracy": fit.best_values(["accuracy"]).get("best_accuracy", float("nan")),
        "epochs_run": fit.epochs_run,
        "train_seconds": fit.train_seconds,
        "images_per_second": fit.images_per_second,
        "resumed_from_epoch": fit.resumed_from_epoch,
        "exported_model": str(exported),
        "history": fit.history,
    }
    _write_json(fit_file, result)
    return result


def _train_seed(
    client: MlflowClient,
    run: RunConfig,
    run_name: str,
    data: PreparedData,
    seed: int,
    experiment_id: str,
    tags: dict[str, str],
) -> dict[str, Any]:
    """Train one seed inside its child run; return its result (also saved in the work folder).

    A seed whose result file names a finished child of the active parent run is
    neither trained nor logged again; one logged into a run that is gone or another
    parent's is logged again (from its saved training) into a child of this parent.
    The run id and result sit beside, not inside, fit_one_seed's seed-<seed>/
    folder, which it empties when a training starts afresh.
    """
    work = paths.work_dir(run_name)
    parent_id = mlflow.active_run().info.run_id
    result_file = work / f"seed-{seed}.result.json"
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        if _finished_child_of(client, result["child_run_id"], parent_id, experiment_id):
            log.info("%s seed %d: finished earlier, reusing %s", run_name, seed, result_file)
            return _with_predictions(result, data, work)
        result_file.unlink()  # its run is gone or another parent's: logged again below

    child_tags = {**tags, "medimg.role": "child", "medimg.seed": str(seed)}
    identity = {key: child_tags[key] for key in (runs.WORK_TAG, "medimg.role", "medimg.seed")}
    with runs.resumable_run(
        work / f"seed-{seed}.mlflow_run_id",
        experiment_id,
        f"{run_name}/seed-{seed}",
        child_tags,
        identity,
        nested=True,
    ) as child:
        child_id = child.info.run_id
        params = runs.flatten_params(_effective_params(run, data, seed))
        batch.log_batch(client, child_id, params=batch.params_of(params))
        logger = mlflow_logger.MlflowEpochLogger(
            child_id, client.tracking_uri, work / f"seed-{seed}"
        )
        seeded = resolve_initial_weights(run, work / "initial-weights")
        fit = _fit_or_reuse(seeded, data, work, seed, logger)
        logger.catch_up()  # the saved history, when this run lacks it (a new run, a kill)
        _log_seed_results(client, child_id, fit)
        model_id = _log_model(client, experiment_id, child_id, fit, data)

    result = {
        **{key: value for key, value in fit.items() if key != "history"},
        "parent_run_id": parent_id,
        "child_run_id": child_id,
        "model": f"seed-{seed}/model.keras",
        "history": fit["history"],
        "logged_model_id": model_id,
    }
    _write_json(result_file, result)
    return _with_predictions(result, data, work)


def _finished_child_of(
    client: MlflowClient, run_id: str, parent_id: str, experiment_id: str
) -> bool:
    """Whether `run_id` is a FINISHED, not deleted child of `parent_id` in this store."""
    if runs.run_problem(client, run_id, experiment_id, {MLFLOW_PARENT_RUN_ID: parent_id}):
        return False
    return client.get_run(run_id).info.status == "FINISHED"


def _log_seed_results(client: MlflowClient, child_id: str, fit: dict[str, Any]) -> None:
    """The seed's best-epoch metrics (each once) and its history.csv, to its child run."""
    values = {
        key: fit[key] for key in (*SEED_METRICS, *(f"best_{m}" for m in VAL_METRICS)) if key in fit
    }
    metrics = batch.not_logged(client, child_id, batch.metrics_at(values))
    batch.log_batch(client, child_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        history_csv = Path(tmp) / "history.csv"
        _history_frame(fit["history"]).to_csv(history_csv, index=False)
        client.log_artifact(child_id, str(history_csv))  # the same path: replaced, not added


def _log_model(
    client: MlflowClient,
    experiment_id: str,
    child_id: str,
    fit: dict[str, Any],
    data: PreparedData,
) -> str:
    """The id of the child run's logged model: the one logged whole before, else logged now.

    A model left unfinished by a kill while it was logged is discarded first; one whose
    logging fails here is discarded at once (its half-copied artifacts too).
    """
    ready = runs.ready_logged_model(client, experiment_id, child_id, LOGGED_MODEL_NAME)
    if ready is not None:
        return ready
    examples = np.asarray(data.split("val").x[:INPUT_EXAMPLE_IMAGES])
    try:
        return log_classifier_model(Path(fit["exported_model"]), _preprocessing(data), examples)
    except BaseException:
        runs.discard_unfinished_models(client, experiment_id, child_id)
        raise


def _predictions_file(work: Path, seed: int) -> Path:
    return work / f"seed-{seed}.{PREDICTIONS_FILE}"


def _save_predictions(model: Any, data: PreparedData, path: Path) -> None:
    """The kept model's val and test probabilities, which the evaluate stage reads
    instead of loading the model (no Keras there)."""
    save_predictions(path, predict_splits(model, data), data_fingerprint(data))


def _with_predictions(result: dict[str, Any], data: PreparedData, work: Path) -> dict[str, Any]:
    """`result` plus where its seed's predictions are; made now if the state lacks them.

    A training state saved by a medimg that did not write predictions yet is
    completed from its exported model rather than trained again.
    """
    path = _predictions_file(work, result["seed"])
    if not path.is_file():
        _save_predictions(load_model(Path(result["exported_model"])), data, path)
    return {
        **result,
        "predictions": f"seed-{result['seed']}/{PREDICTIONS_FILE}",
        "predictions_file": str(path),
    }


def _effective_params(run: RunConfig, data: PreparedData, seed: int) -> dict[str, Any]:
    """Every hyperparameter of one seed's training, model options with their defaults."""
    return {
        **run.model_dump(mode="json"),
        "model_options": run.options().model_dump(mode="json"),
        "seed": seed,
        "image_size": run.input_size(data.image_size),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "n_train": len(data.split("train")),
        "n_val": len(data.split("val")),
    }


def resolve_initial_weights(run: RunConfig, download_dir: Path) -> RunConfig:
    """`run` with an MLflow model URI in model_options.weights replaced by a local folder.

    Training code has no MLflow (it also runs on the GPU machine); MLflow's own
    download puts the model into `download_dir` (once: a resumed stage reuses it).
    """
    weights = run.options().model_dump().get("weights", "none")
    if weights_kind(weights) != "mlflow":
        return run
    from medimg.inference.sources import resolve_model_source

    found = download_dir / "model-folder.txt"  # where in the download the model is
    if found.is_file() and Path(found.read_text()).is_dir():
        folder = Path(found.read_text())
    else:
        atomic.remove_tree(download_dir)
        download_dir.mkdir(parents=True)
        folder = resolve_model_source(weights, download_dir=download_dir)
        atomic.write_file(found, str(folder))
    return run.model_copy(update={"model_options": {**run.model_options, "weights": str(folder)}})


def _prepare_work_dir(work: Path, config: dict[str, Any]) -> str:
    """Keep the training state in `work` only if it was made by this very configuration;
    return the state's work id (its runs' runs.WORK_TAG), made with it.

    Resuming seeds trained with other hyperparameters or data would mix two
    experiments in one run, so a changed configuration starts afresh.
    """
    config_file = work / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()) != config:
        log.warning("%s holds state of another configuration; starting afresh", work)
        atomic.remove_tree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not config_file.is_file():
        _write_json(config_file, config)
    id_file = work / WORK_ID_FILE
    if not id_file.is_file():  # before any run exists: each run carries it
        atomic.write_file(id_file, uuid.uuid4().hex, durable=True)
    return id_file.read_text().strip()


def _forget_logging(work: Path) -> None:
    """Drop the work folder's records of the runs of a parent run that is gone (the child
    run ids, the seeds' results, the registration); the training state stays."""
    for record in [
        *work.glob("seed-*.mlflow_run_id"),
        *work.glob("seed-*.result.json"),
        work / REGISTERED_FILE,
    ]:
        record.unlink(missing_ok=True)


def _aggregate(results: list[dict[str, Any]]) -> dict[str, float]:
    """The mean over seeds of each best_val_* metric and of the training accuracy
    (the one aggregator, medimg.evaluation.statistics).

    Means only: the parent run holds the few numbers a user compares (the evaluate
    stage adds the test and validation headline, evaluation.parent_metrics); each
    seed's values are on its child run.
    """
    keys = (*(f"best_{metric}" for metric in VAL_METRICS), "best_train_accuracy")
    return {f"{key}_mean": summarize([r[key] for r in results]).mean for key in keys}


def _best_result(results: list[dict[str, Any]], monitor: str) -> dict[str, Any]:
    """The seed that is best on the run's monitor (validation only; lowest loss, else highest)."""
    key = f"best_{monitor}"
    pick = min if monitor == "val_loss" else max
    return pick(results, key=lambda r: r[key])


def _register(client: MlflowClient, settings: RunSettings, best: dict[str, Any]) -> dict:
    """Register the best seed's model once; a resumed stage reuses the earlier registration
    (recorded, or found in the registry when a kill came before it was recorded)."""
    run, run_name, names = settings.run, settings.name, settings.tracking
    done = paths.work_dir(run_name) / REGISTERED_FILE
    if done.is_file():
        recorded = json.loads(done.read_text())
        if recorded.pop("run_id", None) == best["child_run_id"]:
            return recorded
    registered = model_registry.register_best(
        client,
        model_id=best["logged_model_id"],
        run_id=best["child_run_id"],
        name=model_registry.registered_model_name(names.registered_model_prefix, run.dataset),
        run_name=run_name,
        seed=best["seed"],
        best_val_auc=best["best_val_auc"],
        champion_alias=names.champion_alias,
        experiment_copy=runs.experiment_copy_name(),
    )
    _write_json(done, {**registered, "run_id": best["child_run_id"]})
    return registered


def _write_outputs(
    run_name: str, results: list[dict[str, Any]], preprocessing: dict, summary: dict
) -> Path:
    """Build models/<run>/ completely beside it, then swap it in."""
    final = paths.models_dir(run_name)
    with atomic.building(final) as staging:
        for result in results:
            seed_dir = staging / f"seed-{result['seed']}"
            seed_dir.mkdir(parents=True)
            shutil.copy2(result["exported_model"], seed_dir / "model.keras")
            shutil.copy2(result["predictions_file"], seed_dir / PREDICTIONS_FILE)
            _history_frame(result["history"]).to_csv(seed_dir / "history.csv", index=False)
            _write_json(seed_dir / "preprocessing.json", preprocessing)
        _write_json(staging / "summary.json", summary)
    return final


SUMMARY_SEED_KEYS = (
    "seed",
    "child_run_id",
    "model",
    "predictions",
    "best_epoch",
    "best_val_auc",
    "best_val_accuracy",
    "best_val_loss",
    "best_train_accuracy",
    "epochs_run",
    "train_seconds",
    "images_per_second",
    "resumed_from_epoch",
)


def load_checked_data(run: RunConfig) -> PreparedData:
    """The run's prepared arrays, with the meta.json keys the train stage needs."""
    data = load_prepared(paths.prepared_dir(run.dataset, run.split_protocol))
    missing = [key for key in REQUIRED_META_KEYS if key not in data.meta]
    if missing:
        raise PreparedDataError(
            f"{data.directory / 'meta.json'} lacks {missing}; "
            f"re-run the augment stage: dvc repro augment@{run.dataset}"
        )
    return data


def _parent_tags(settings: RunSettings, data: PreparedData) -> dict[str, str]:
    run_name, run = settings.name, settings.run
    return {
        **runs.run_tags(run_name, data.meta["source_fingerprint"], run.split_protocol),
        **runs.process_tags(),
        "medimg.profile": settings.profile,
        "medimg.dataset": run.dataset,
        "medimg.model": run.model,
        **settings.tags,
    }


def lock_file(run_name: str) -> Path:
    """The lock that lets one process at a time train configuration `run_name`."""
    return paths.work_dir(run_name).parent / "locks" / f"{run_name}.lock"


def run_train(settings: RunSettings) -> dict[str, Any]:
    """Train every seed of run `settings.name`; write models/<run>/; return the summary.

    Checks the configuration, the prepared data and the tracking store before
    any work, so a failure leaves models/ and MLflow untouched. A second training
    of the same configuration while this one runs is refused (RunLockedError).
    """
    run_name, run = settings.name, settings.run
    data = load_checked_data(run)
    uri = store.tracking_uri()
    name = store.experiment_name(settings.tracking.experiment_prefix, run.dataset)
    store.ensure_reachable(uri, experiment=name)
    work = paths.work_dir(run_name)
    with exclusive_run(lock_file(run_name), f"run {run_name!r}"), _one_line_errors(work, uri):
        atomic.remove_leftovers(work)  # of a removal that was killed
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        experiment_id = store.get_or_create_experiment(client, name)
        for run_id in runs.close_orphaned_runs(client, [experiment_id]):
            log.warning("MLflow run %s was left RUNNING by a dead process: marked KILLED", run_id)
        summary = _train_all(settings, data, experiment_id)
        summary.update(experiment_name=name, tracking_uri=uri)
        results = summary.pop("results")
        _write_outputs(run_name, results, _preprocessing(data), summary)
        # Only now: until the outputs are in place, a failed stage can resume from this
        # state. Removed whole (renamed aside first): a kill leaves no part of it to resume.
        atomic.remove_tree(work)
    return summary


@contextmanager
def _one_line_errors(work: Path, uri: str) -> Iterator[None]:
    """A full disk or read-only output (the work folder, models/, the MLflow store's files)
    or a full MLflow store ends as one line naming the path and what to free or fix."""
    # MLflow logs each database error of its SQL store with a traceback, then raises it
    # (an MlflowException with the same text): it is shown once, by the stage.
    store_log = logging.getLogger("mlflow.store.db.utils")
    level = store_log.level
    store_log.setLevel(logging.CRITICAL)
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        outputs = [work, paths.models_dir(work.name)]
        if uri.startswith("sqlite:///"):
            outputs.append(Path(uri.removeprefix("sqlite:///")))
        translated = atomic.output_error(err, *outputs) or runs.store_full_error(err, uri)
        if translated is None:
            raise
        raise translated from err
    finally:
        store_log.setLevel(level)


def _train_all(settings: RunSettings, data: PreparedData, experiment_id: str) -> dict[str, Any]:
    """The parent run: every seed, the aggregates, the registration; returns the summary."""
    run_name, run, dataset = settings.name, settings.run, settings.dataset
    tags = _parent_tags(settings, data)
    parent_params = {
        # model options with the schema's defaults, so e.g. the weights always show
        "run": {
            **run.model_dump(mode="json"),
            "model_options": run.options().model_dump(mode="json"),
        },
        "prepare": dataset.prepare.model_dump(mode="json"),
        "split": dataset.split.model_dump(mode="json"),
    }
    work = paths.work_dir(run_name)
    tags[runs.WORK_TAG] = _prepare_work_dir(work, {**parent_params, "data": data.meta})
    parent_tags = {**tags, "medimg.role": "parent"}
    identity = {key: parent_tags[key] for key in (runs.WORK_TAG, "medimg.role")}
    id_file = work / PARENT_ID_FILE
    recorded = id_file.read_text().strip() if id_file.is_file() else None
    client = MlflowClient(mlflow.get_tracking_uri())
    with runs.resumable_run(id_file, experiment_id, run_name, parent_tags, identity) as parent:
        parent_id = parent.info.run_id
        if recorded not in (None, parent_id):
            _forget_logging(work)  # every seed is logged again, into children of this parent
        params = runs.flatten_params(parent_params)
        batch.log_batch(client, parent_id, params=batch.params_of(params))
        results = [
            _train_seed(client, run, run_name, data, seed, experiment_id, tags)
            for seed in run.seeds()
        ]
        aggregates = batch.metrics_at(_aggregate(results))
        batch.log_batch(client, parent_id, metrics=batch.not_logged(client, parent_id, aggregates))
        best = _best_result(results, run.monitor)
        registered = (
            _register(client, settings, best) if settings.tracking.register_models else None
        )
    return {
        "run": run_name,
        "dataset": run.dataset,
        "model": run.model,
        "experiment_id": experiment_id,
        "parent_run_id": parent.info.run_id,
        "seeds": [{key: r[key] for key in SUMMARY_SEED_KEYS} for r in results],
        "best_seed": best["seed"],
        "registered": registered,
        "results": results,
    }


def _preprocessing(data: PreparedData) -> dict[str, Any]:
    """preprocessing.json: what a new image must be turned into for this model."""
    return {
        "classes": data.classes,
        # The model's input is the prepared size; it resizes to run.image_size itself.
        "image_size": data.image_size,
        "channels": data.channels,
        "aspect": data.meta["aspect"],
        # arrays prepared before this option existed were not normalised
        "normalize": data.meta.get("normalize", "none"),
        "crop": data.meta.get("crop", "none"),
        "input": PREPROCESSING_INPUT,
    }
