"""`medimg report`: reports/report.md and reports/report.html from the runs in MLflow.

The DVC stage `report` runs this after every evaluate stage. Runs imported from the
GPU machine (`medimg import-results`) are in MLflow only, so DVC does not see them:
run `medimg report` by hand after an import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medimg import atomic, paths
from medimg.config.params import Params, parse_params
from medimg.evaluation.statistics import CONFIDENCE
from medimg.inference.captions import display_name
from medimg.reporting import charts
from medimg.reporting.collect import Configuration, collect_configurations, open_store
from medimg.reporting.comparisons import (
    Comparison,
    compare,
    comparison_records,
    method_description,
)
from medimg.reporting.differences import BOOTSTRAP_REPLICATES
from medimg.reporting.flags import AUC_STUCK_TOLERANCE, model_flags
from medimg.reporting.render import FigureImage, Report, Section, to_html, to_markdown
from medimg.reporting.studies import StudyRecord, collect_studies, study_section
from medimg.reporting.tables import (
    Settings,
    comparison_table,
    detail_table,
    is_reduced,
    protocol_table,
    runs_table,
    thesis_table,
)
from medimg.reporting.thesis import THESIS_RESULTS_FILE, ThesisResults, load_thesis_results
from medimg.tracking import store

REPORT_FILES = ("report.md", "report.html")
# The comparisons of the report, machine-readable (one entry per pair and setting).
COMPARISONS_FILE = "comparisons.json"
# The profile whose image sizes and epochs are the thesis's; smaller ones are "reduced".
FULL_PROFILE = "full"
SAMPLE_BANNER = (
    "Rows and figures marked [sample] were trained on the embedded sample (profile: "
    "sample): their numbers test the pipeline, not the models. Only full-size rows "
    "compare with the thesis."
)
FLAG_BANNER = (
    "Rows marked [single class] hold a repeat that called every test image one class; "
    f"[val AUC stuck at 0.5] one whose validation AUC never rose above "
    f"{0.5 + AUC_STUCK_TOLERANCE:.2f}: such a model did not learn, whatever its accuracy. "
    "Each dataset's section names the repeats."
)
REDUCED_BANNER = (
    "Rows marked 'reduced' used smaller images or fewer epochs than the full profile "
    "(for example a CPU check); their image size and epochs are given beside them."
)


def report_dir() -> Path:
    """Where the report goes: reports/, beside reports/runs/ and reports/tune/."""
    return paths.reports_root()


def full_settings(params: Params) -> dict[str, Settings]:
    """Image size and epochs of each run under the full profile; {} when there is none."""
    if FULL_PROFILE not in params.profiles:
        return {}
    full = parse_params({**params.source, "profile": FULL_PROFILE})
    return {
        name: Settings(run.input_size(full.dataset(run.dataset).prepare.image_size), run.epochs)
        for name, run in full.runs.items()
    }


def _ordered(names: Sequence[str], configs: Sequence[Configuration]) -> list[Configuration]:
    """`configs` with those named in `names` first, in that order; the rest as they were."""
    rank = {name: index for index, name in enumerate(names)}
    return sorted(configs, key=lambda c: rank.get(c.name, len(rank)))


def _sample_tag(configs: Sequence[Configuration]) -> str:
    """ " [sample]" when a configuration drawn in a figure is of the sample profile."""
    return " [sample]" if any(c.is_sample for c in configs) else ""


def _figures(classes: list[str], configs: Sequence[Configuration]) -> tuple[FigureImage, ...]:
    figures = []
    roc = charts.roc_overlay_png(classes, configs)
    if roc is not None:
        per_class = (
            f"the positive class, {display_name(classes[1])}"
            if len(classes) == 2
            else "one panel per class, that class against the rest (the macro ROC AUC of "
            "the tables is the mean of these areas over the repeats)"
        )
        figures.append(
            FigureImage(
                "ROC curves on the test split"
                + _sample_tag([c for c in configs if c.roc is not None]),
                f"Each configuration's best seed (chosen on validation data); {per_class}. "
                "The legend gives the area under each curve.",
                roc,
            )
        )
    confusion = charts.confusion_png(classes, configs)
    if confusion is not None:
        figures.append(
            FigureImage(
                "Confusion matrices on the test split"
                + _sample_tag([c for c in configs if c.confusion is not None]),
                "Each configuration's best seed: counts, coloured and labelled by the share "
                "of the actual class (rows).",
                confusion,
            )
        )
    return tuple(figures)


def dataset_section(
    dataset: str,
    classes: list[str],
    thesis: ThesisResults,
    configs: Sequence[Configuration],
    full: dict[str, Settings],
    comparisons: Sequence[Comparison] = (),
) -> Section:
    """Tables and figures of one dataset: the thesis comparison, details, protocols,
    the comparisons with their intervals; notes name the repeats that did not learn."""
    configs = _ordered(thesis.compared_runs(dataset), configs)
    published = thesis.datasets.get(dataset)
    title = published.title if published else dataset
    tables = []
    if published:
        tables.append(thesis_table(published, configs, full, thesis.source))
    tables.append(detail_table(title, classes, configs))
    group = thesis.protocol_comparisons.get(dataset, [])
    if group and any(c.name in group for c in configs):
        tables.append(protocol_table(title, group, configs))
    if comparisons:
        tables.append(comparison_table(title, comparisons))
    notes = [f"Warning, {flag.detail}" for c in configs for flag in model_flags(c)]
    if not configs:
        notes.append("No configuration of this dataset in params.yaml or MLflow.")
    return Section(
        title=f"{title} ({dataset})",
        tables=tuple(tables),
        figures=_figures(classes, configs),
        notes=tuple(notes),
    )


def compare_all(
    params: Params, configs: Sequence[Configuration], thesis: ThesisResults
) -> dict[str, list[Comparison]]:
    """thesis_results.yaml's comparisons of each dataset of params.yaml, measured."""
    return {
        dataset: compare(
            dataset,
            thesis.comparisons.get(dataset, []),
            [c for c in configs if c.dataset == dataset],
        )
        for dataset in params.datasets
    }


def comparisons_document(
    comparisons: Mapping[str, Sequence[Comparison]], tracking_uri: str, generated: datetime
) -> dict[str, Any]:
    """reports/comparisons.json: the method, then one entry per compared pair and setting."""
    return {
        "generated": generated.strftime("%Y-%m-%d %H:%M UTC"),
        "tracking_uri": tracking_uri,
        "method": method_description(),
        "comparisons": comparison_records([c for group in comparisons.values() for c in group]),
    }


def build_report(
    params: Params,
    configs: Sequence[Configuration],
    thesis: ThesisResults,
    tracking_uri: str,
    generated: datetime,
    comparisons: Mapping[str, Sequence[Comparison]] | None = None,
    studies: Sequence[StudyRecord] = (),
) -> Report:
    """The report of `configs` and `studies`; `comparisons` (compare_all's) are measured
    here when None."""
    full = full_settings(params)
    if comparisons is None:
        comparisons = compare_all(params, configs, thesis)
    banners = []
    if any(c.is_sample for c in configs):
        banners.append(SAMPLE_BANNER)
    if any(not c.is_sample and is_reduced(c, full.get(c.name)) for c in configs):
        banners.append(REDUCED_BANNER)
    if any(model_flags(c) for c in configs):
        banners.append(FLAG_BANNER)
    notes = (
        f"Thesis figures: {thesis.source}. {thesis.protocol}",
        "Ours: generated from the MLflow runs, each configuration trained 'repeats' times "
        f"(seeds seed, seed+1, ...). Mean ± sample std (ddof 1); {100 * CONFIDENCE:.0f} % "
        "confidence interval: Student's t over the repeats' values, "
        "mean ± t(0.975, n−1)·std/√n; none with one repeat. It measures the spread "
        "of the trainings only.",
        "Comparisons (Δ between two of our configurations): each Δ comes with a "
        f"{100 * CONFIDENCE:.0f} % interval from a two-level bootstrap "
        f"({BOOTSTRAP_REPLICATES} replicates, fixed seed: the same runs give the same "
        "report) that resamples the test images within each class and, independently per "
        "side, the repeat trainings, because a difference has two sources of chance: the "
        "trainings, and which images a test set of tens or hundreds holds. When both were "
        "tested on the same images (the evaluate stage logs each repeat's per-image "
        "predictions with the images' paths), the images are resampled together (paired), "
        "which keeps the models' shared hard cases together; on different test sets "
        "(other split protocols) each side resamples its own. For two classes, DeLong's "
        "test of the ensembles' ROC AUC (the standard test for two AUCs on one test set) "
        "adds a p-value. A comparison of runs trained differently (epochs, image size, "
        "test-set size, protocol, profile or device, beyond what it tests) is marked not "
        "like-for-like. Pairs and what each tests: thesis_results.yaml.",
        "Split protocols: official = the dataset's published test set, patient-grouped "
        "validation; pooled = a re-split with every patient and duplicate cluster on one "
        "side; thesis = the thesis's protocol (leaky).",
        "Which runs: the pipeline's latest parent run of each configuration "
        "(models/<run>/summary.json) and every run imported from the GPU machine "
        "(tag medimg.imported), the latest per configuration and device. Each row links "
        "to its MLflow parent run.",
    )
    sections = []
    for dataset, config in params.datasets.items():
        of_dataset = [c for c in configs if c.dataset == dataset]
        sections.append(
            dataset_section(
                dataset, config.classes, thesis, of_dataset, full, comparisons.get(dataset, ())
            )
        )
    sections += [study_section(record) for record in studies]
    return Report(
        title="medimg report: the thesis's results and ours",
        generated=generated.strftime("%Y-%m-%d %H:%M UTC"),
        tracking_uri=tracking_uri,
        banners=tuple(banners),
        notes=notes,
        sections=tuple(sections),
        runs=runs_table(configs, full),
    )


def _write_files(contents: dict[Path, str]) -> None:
    """Each file appears whole (atomic.write_file); all were rendered before the first write."""
    for path, text in contents.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_file(path, text)


def write_report(params: Params, thesis_file: Path = THESIS_RESULTS_FILE) -> list[Path]:
    """Read the runs of `params` from MLflow; write reports/report.{md,html} and
    reports/comparisons.json; return the paths.

    Raises ReportError (bad thesis file, summary.json naming a run the store lacks)
    or TrackingError (store unreachable) before anything is written.
    """
    thesis = load_thesis_results(thesis_file)
    uri = store.tracking_uri()
    client = open_store(uri)
    configs = collect_configurations(client, params)
    studies = collect_studies(client, params, configs)
    comparisons = {
        **compare_all(params, configs, thesis),
        "studies": [c for record in studies for c in record.comparisons],
    }
    # A server URI may carry a password, a local path a home folder: the report is shared.
    masked, generated = store.shareable_uri(uri), datetime.now(UTC)
    report = build_report(params, configs, thesis, masked, generated, comparisons, studies)
    document = comparisons_document(comparisons, masked, generated)
    texts = (
        to_markdown(report),
        to_html(report),
        json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
    )
    targets = [report_dir() / name for name in (*REPORT_FILES, COMPARISONS_FILE)]
    _write_files(dict(zip(targets, texts, strict=True)))
    return targets
