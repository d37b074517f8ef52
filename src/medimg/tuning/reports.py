"""What a study leaves in reports/tune/<study>/, and the command that applies its best values.

best_params.yaml  the best trial's values as dotted params.yaml keys, its value,
                  number, the study and the storage, and the `dvc exp run` command
summary.json      best value, trial counts, epochs trained (DVC metrics)
trials.csv        one row per trial: number, state, value, parameters, epochs
figures/*.png     Optuna's optimisation history, intermediate values, parameter
                  importances, parallel coordinates and slice plots
"""

from __future__ import annotations

import json
import shlex
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import optuna
import yaml
from optuna.trial import TrialState
from optuna.visualization import matplotlib as optuna_plots

from medimg import atomic
from medimg.tuning.objective import EPOCHS_ATTR
from medimg.tuning.study import TuneStudyError

# An applied configuration is trained like the thesis's runs: 5 seeds.
TUNED_RUN_REPEATS = 5
# Importances (fANOVA), parallel coordinates and slices compare complete trials.
MIN_COMPLETE_TO_COMPARE = 2
FIGURE_DPI = 110


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state: complete, pruned, failed, running, waiting."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
        "running": states.count(TrialState.RUNNING),
        "waiting": states.count(TrialState.WAITING),
    }


def _hydra_value(value: Any) -> str:
    """A value as Hydra's override grammar (dvc exp run -S) reads it back unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # double-quoted: a string whatever it looks like
    return repr(value)


def apply_command(run_name: str, values: dict[str, Any]) -> str:
    """`dvc exp run` that trains `run_name` with `values` as an ordinary 5-seed run.

    `++` adds a key the run does not spell out yet (a model option left at its default).
    """
    sets = [f"++runs.{run_name}.{key}={_hydra_value(v)}" for key, v in values.items()]
    sets.append(f"runs.{run_name}.repeats={TUNED_RUN_REPEATS}")
    args = ["dvc", "exp", "run"]
    for override in sets:
        args += ["-S", override]
    return shlex.join([*args, f"train@{run_name}", f"evaluate@{run_name}"])


def keys_shadowed_by_profile(
    overrides: dict[str, Any], run_name: str, values: dict[str, Any]
) -> list[str]:
    """The selected profile's dotted overrides that would replace a tuned value set on the
    base params (`runs.<run>.<key>`)."""
    tuned = [f"runs.{run_name}.{key}" for key in (*values, "repeats")]
    return sorted(
        dotted
        for dotted in overrides
        if any(
            t == dotted or t.startswith(dotted + ".") or dotted.startswith(t + ".") for t in tuned
        )
    )


def best_params_record(
    study: optuna.Study,
    study_name: str,
    run_name: str,
    objective: str,
    storage: str,
    study_run_id: str | None = None,
) -> dict[str, Any]:
    """best_params.yaml's content; TuneStudyError when no trial is complete yet."""
    counts = trial_counts(study)
    if counts["complete"] == 0:
        raise TuneStudyError(
            f"study {study_name!r} ({study.study_name} in {storage}) has no complete trial yet "
            f"({counts['pruned']} pruned, {counts['failed']} failed, {counts['running']} "
            f"running); run more: medimg tune --study {study_name} --n-trials N"
        )
    best = study.best_trial
    return {
        "study": study_name,
        "storage_study": study.study_name,
        "storage": storage,
        # the MLflow study run: the confirmation tags its runs with it, the report reads it
        "mlflow_study_run_id": study_run_id,
        "run": run_name,
        "objective": f"val {objective}",
        "direction": study.direction.name.lower(),
        "value": best.value,
        "trial_number": best.number,
        "params": {f"runs.{run_name}.{key}": value for key, value in best.params.items()},
        "command": apply_command(run_name, best.params),
    }


def _save(axes: Any, path: Path) -> None:
    """Save the figure of `axes` (one Axes or an array of them) and close it."""
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    figure = first.figure
    figure.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(figure)


def write_figures(study: optuna.Study, folder: Path) -> list[str]:
    """Optuna's figures as PNG files in `folder`; returns notes on figures left out.

    Importances, parallel coordinates and slices compare complete trials: with fewer
    than MIN_COMPLETE_TO_COMPARE they say nothing and are left out, with a note.
    """
    complete = trial_counts(study)["complete"]
    plots: dict[str, Callable[[optuna.Study], Any]] = {}
    if complete:
        plots["optimization_history"] = optuna_plots.plot_optimization_history
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plots["intermediate_values"] = optuna_plots.plot_intermediate_values
    comparing = {
        "param_importances": optuna_plots.plot_param_importances,
        "parallel_coordinate": optuna_plots.plot_parallel_coordinate,
        "slice": optuna_plots.plot_slice,
    }
    notes = []
    if complete >= MIN_COMPLETE_TO_COMPARE:
        plots.update(comparing)
    else:
        notes.append(
            f"{', '.join(comparing)} need {MIN_COMPLETE_TO_COMPARE} complete trials, "
            f"the study has {complete}: not drawn"
        )
    folder.mkdir(parents=True, exist_ok=True)
    plt.switch_backend("Agg")  # files only; no display needed or wanted
    with warnings.catch_warnings():
        # optuna.visualization.matplotlib is "experimental" in Optuna 5.0.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in plots.items():
            _save(plot(study), folder / f"{name}.png")
    return notes


def _trials_frame_csv(study: optuna.Study, path: Path) -> None:
    frame = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params"))
    frame[EPOCHS_ATTR] = [t.user_attrs.get(EPOCHS_ATTR) for t in study.get_trials(deepcopy=False)]
    frame.to_csv(path, index=False)


def write_study_reports(
    study: optuna.Study,
    study_name: str,
    run_name: str,
    objective: str,
    storage: str,
    dest: Path,
    study_run_id: str | None = None,
) -> dict[str, Any]:
    """Write reports/tune/<study>/ whole (atomic.building); return summary.json's content."""
    record = best_params_record(study, study_name, run_name, objective, storage, study_run_id)
    counts = trial_counts(study)
    epochs = [t.user_attrs.get(EPOCHS_ATTR, 0) for t in study.get_trials(deepcopy=False)]
    summary = {
        "best_value": record["value"],
        "best_trial": record["trial_number"],
        "complete": counts["complete"],
        "pruned": counts["pruned"],
        "failed": counts["failed"],
        "epochs_trained": int(sum(epochs)),
    }
    with atomic.building(dest) as staging:
        (staging / "best_params.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _trials_frame_csv(study, staging / "trials.csv")
        notes = write_figures(study, staging / "figures")
    return {**summary, "notes": notes, "record": record}
