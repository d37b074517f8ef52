"""The report's section per study: what was searched, how it went, and whether it held.

For each `tune:` entry of params.yaml: its space, its trials (complete, pruned,
failed), the best value and parameters, Optuna's optimisation history and, with
enough complete trials, the parameter importances (both drawn by the tune stage),
and the confirmation's test numbers (the best values trained again on fresh seeds:
run <study>_best) beside the untuned run's, with the interval of the difference
(medimg.reporting.comparisons). Everything is read from MLflow: the confirmation's
parent run names the study run whose best values it trained.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from medimg.config.params import Params
from medimg.config.studies import SearchDimension, StudyConfig
from medimg.reporting.collect import Configuration
from medimg.reporting.comparisons import Comparison, compare
from medimg.reporting.render import FigureImage, Section
from medimg.reporting.tables import Cell, Row, Table, comparison_table, mean_std
from medimg.reporting.thesis import ComparisonSpec
from medimg.tuning.confirm import STUDY_RUN_TAG, confirmation_name

# Logged on the study run by the tune stage (medimg.tuning.tune_stage.SUMMARY_METRICS).
COUNTS = ("complete", "pruned", "failed")
BEST_TAG_PREFIX = "medimg.best."
FIGURES = {
    "optimization_history": "Optimisation history",
    "param_importances": "Parameter importances (fANOVA)",
}
# fANOVA's importances from a handful of one-seed trials are noise, not evidence (one
# configuration's seeds spanned 8 points of validation accuracy, docs/research.md):
# below this many complete trials the report leaves them out and says so.
MIN_TRIALS_FOR_IMPORTANCES = 10


@dataclass(frozen=True)
class StudyRecord:
    """One study as MLflow holds it: its study run (None until the study is confirmed,
    which names it) and the confirmation with the untuned run it is compared with."""

    name: str
    study: StudyConfig
    untuned: Configuration | None
    confirmation: Configuration | None
    study_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    best: dict[str, str] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)
    comparisons: tuple[Comparison, ...] = ()


def _figures(client: MlflowClient, run_id: str) -> dict[str, bytes]:
    """The study run's figures (study/figures/<name>.png) that exist."""
    found = {}
    listed = {info.path for info in client.list_artifacts(run_id, "study/figures")}
    with tempfile.TemporaryDirectory() as tmp:
        for name in FIGURES:
            path = f"study/figures/{name}.png"
            if path in listed:
                found[name] = Path(client.download_artifacts(run_id, path, tmp)).read_bytes()
    return found


def _spec(name: str, study: StudyConfig, untuned: Configuration) -> ComparisonSpec:
    varies = ["image_size"] if "image_size" in study.space else []
    return ComparisonSpec(
        reference=untuned.name,
        candidate=confirmation_name(name),
        tests=f"the best values of study {name} beat the untuned {study.run} (fresh seeds)",
        varies=varies,
    )


def collect_study(
    client: MlflowClient, name: str, study: StudyConfig, configs: Sequence[Configuration]
) -> StudyRecord:
    """The study `name`'s record from `configs` (collect_configurations') and MLflow."""
    confirmation = next((c for c in configs if c.name == confirmation_name(name)), None)
    untuned = next((c for c in configs if c.name == study.run and not c.imported), None)
    record = StudyRecord(name, study, untuned, confirmation)
    if untuned is not None and confirmation is not None:
        dataset = confirmation.dataset
        comparisons = compare(dataset, [_spec(name, study, untuned)], [untuned, confirmation])
        record = StudyRecord(name, study, untuned, confirmation, comparisons=tuple(comparisons))
    run_id = confirmation.tags.get(STUDY_RUN_TAG) if confirmation is not None else None
    if run_id is None:
        return record
    try:
        study_run = client.get_run(run_id)
    except MlflowException:
        return record  # deleted since: the section says the trials are not available
    best = {
        key.removeprefix(BEST_TAG_PREFIX).removeprefix(f"runs.{study.run}."): value
        for key, value in study_run.data.tags.items()
        if key.startswith(BEST_TAG_PREFIX)
    }
    return StudyRecord(
        name,
        study,
        untuned,
        confirmation,
        run_id,
        dict(study_run.data.metrics),
        best,
        _figures(client, run_id),
        record.comparisons,
    )


def collect_studies(
    client: MlflowClient, params: Params, configs: Sequence[Configuration]
) -> list[StudyRecord]:
    return [collect_study(client, name, study, configs) for name, study in params.tune.items()]


def _searched(dimension: SearchDimension) -> str:
    if dimension.choices is not None:
        return "one of " + ", ".join(str(c) for c in dimension.choices)
    scale = " (log scale)" if dimension.log else ""
    step = f", step {dimension.step}" if dimension.step is not None else ""
    return f"{dimension.low} to {dimension.high}{scale}{step}"


def _shown(value: str) -> str:
    """A best value as logged (a string tag), floats to 4 significant digits."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.4g}"


def space_table(record: StudyRecord) -> Table:
    rows = tuple(
        Row((Cell(key), Cell(_searched(dim)), Cell(_shown(record.best.get(key, "—")))))
        for key, dim in record.study.space.items()
    )
    return Table(
        caption=f"Study {record.name}: the space searched over run {record.study.run}",
        columns=("run key", "searched", "best trial"),
        rows=rows,
        notes=(
            f"Objective: validation {record.study.objective} ({record.study.study_direction}) "
            "of each trial's kept checkpoint; the test split is never read by a study.",
        ),
    )


def trials_table(record: StudyRecord) -> Table:
    metrics = record.metrics
    value = metrics.get("best_value")
    cells = [Cell(str(int(metrics[k])) if k in metrics else "—") for k in COUNTS]
    cells += [
        Cell("—" if value is None else f"{value:.4f}"),
        Cell(str(int(metrics["best_trial"])) if "best_trial" in metrics else "—"),
        Cell(str(int(metrics["epochs_trained"])) if "epochs_trained" in metrics else "—"),
    ]
    return Table(
        caption=f"Study {record.name}: trials",
        columns=("complete", "pruned", "failed", "best value", "best trial", "epochs trained"),
        rows=(Row(tuple(cells)),),
        notes=(
            f"Pruner: {record.study.pruner.name}; sampler: {record.study.sampler.name} "
            f"(seed {record.study.sampler.seed}); {record.study.repeats} seed(s) per trial. "
            "Pruned trials stopped early on the per-epoch validation values.",
        ),
    )


def confirmation_table(record: StudyRecord) -> Table:
    """The untuned run and the confirmation side by side: test accuracy and ROC AUC."""
    rows = []
    for label, config in (("untuned", record.untuned), ("best values", record.confirmation)):
        if config is None or config.status != "evaluated":
            status = "not run" if config is None else config.status
            rows.append(Row((Cell(label), Cell(status), Cell("—"), Cell("—"), Cell("—"))))
            continue
        rows.append(
            Row(
                (
                    Cell(label),
                    Cell(config.tagged_label, config.ui_url()),
                    Cell(str(len(config.children))),
                    Cell(mean_std(config.summary("test_accuracy"), as_percent=True)),
                    Cell(mean_std(config.summary("test_roc_auc"), as_percent=False)),
                )
            )
        )
    return Table(
        caption=f"Study {record.name}: its best values on fresh seeds against the untuned run",
        columns=("", "run", "repeats", "test accuracy", "test ROC AUC"),
        rows=tuple(rows),
        notes=(
            f"The confirmation ({confirmation_name(record.name)}) trains the best trial's "
            f"values on {record.study.confirm_repeats} seed(s) the study never trained; "
            "the study chose them on validation, so the test numbers are read only here.",
        ),
    )


def study_section(record: StudyRecord) -> Section:
    tables = [space_table(record), trials_table(record), confirmation_table(record)]
    if record.comparisons:
        tables.append(comparison_table(f"Study {record.name}", record.comparisons))
    notes = []
    if record.study_run_id is None:
        notes.append(
            "Trials not available: the study has not been confirmed yet (dvc repro "
            f"confirm@{record.name}), and the confirmation names the study run it confirmed."
        )
    figures = []
    complete = int(record.metrics.get("complete", 0))
    for name, title in FIGURES.items():
        png = record.figures.get(name)
        if png is None:
            continue
        if name == "param_importances" and complete < MIN_TRIALS_FOR_IMPORTANCES:
            notes.append(
                f"Parameter importances left out: {complete} complete trial(s); below "
                f"{MIN_TRIALS_FOR_IMPORTANCES} they are noise, not evidence."
            )
            continue
        figures.append(FigureImage(f"{title}, study {record.name}", "Drawn by Optuna.", png))
    return Section(
        title=f"Study {record.name} (run {record.study.run})",
        tables=tuple(tables),
        figures=tuple(figures),
        notes=tuple(notes),
    )
