"""The report's section per study, from a real sqlite MLflow store filled as the stages fill it."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from medimg.config.base import read_yaml
from medimg.config.params import parse_params
from medimg.reporting.collect import collect_configurations
from medimg.reporting.render import to_html, to_markdown
from medimg.reporting.report import build_report
from medimg.reporting.studies import MIN_TRIALS_FOR_IMPORTANCES, collect_studies
from medimg.reporting.thesis import load_thesis_results
from medimg.tuning.confirm import STUDY_RUN_TAG, STUDY_TAG, confirmation_name
from report_support import Store

REPO = Path(__file__).resolve().parents[1]
STUDY = "xray_cnn_search"


def _png() -> bytes:
    figure = Figure(figsize=(1, 1))
    figure.subplots().plot([0, 1], [0, 1])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _configuration(store: Store, run: str, accuracies: list[float], tags: dict) -> str:
    parent = store.parent(
        "chest_xray",
        run,
        {"medimg.profile": "sample", "medimg.split_protocol": "official", **tags},
        {"run.epochs": 10, "prepare.image_size": 64},
    )
    for seed, accuracy in enumerate(accuracies):
        store.child("chest_xray", parent, seed, {"test_accuracy": accuracy, "test_roc_auc": 0.9})
    store.summary_json(run, parent)
    return parent


@pytest.fixture
def filled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The untuned xray_cnn, a study run with its figures, and the study's confirmation."""
    store = Store(tmp_path)
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    _configuration(store, "xray_cnn", [0.70, 0.74], {})
    study_run = store.client.create_run(
        store.experiments["chest_xray"],
        tags={
            "medimg.role": "study",
            "medimg.study": STUDY,
            "medimg.best.runs.xray_cnn.learning_rate": "0.0012345678",
            "medimg.best.runs.xray_cnn.batch_size": "16",
        },
    ).info.run_id
    for key, value in {"best_value": 0.91, "best_trial": 1, "complete": 2, "pruned": 1}.items():
        store.client.log_metric(study_run, key, value)
    store.client.log_metric(study_run, "failed", 0)
    store.client.log_metric(study_run, "epochs_trained", 23)
    figures = tmp_path / "figures-to-log" / "figures"
    figures.mkdir(parents=True)
    for name in ("optimization_history", "param_importances"):
        (figures / f"{name}.png").write_bytes(_png())
    store.client.log_artifacts(study_run, str(figures.parent), "study")
    _configuration(
        store,
        confirmation_name(STUDY),
        [0.80, 0.84, 0.82],
        {STUDY_TAG: STUDY, STUDY_RUN_TAG: study_run},
    )
    return store


def test_a_study_section_shows_space_trials_and_its_confirmation(filled: Store) -> None:
    params = parse_params(read_yaml(REPO / "params.yaml"))
    configs = collect_configurations(filled.client, params)
    studies = {record.name: record for record in collect_studies(filled.client, params, configs)}
    record = studies[STUDY]
    assert record.metrics["complete"] == 2 and record.best["learning_rate"] == "0.0012345678"
    assert set(record.figures) == {"optimization_history", "param_importances"}

    report = build_report(
        params,
        configs,
        load_thesis_results(),
        filled.uri,
        datetime.now(UTC),
        None,
        studies.values(),
    )
    markdown = to_markdown(report)
    section = markdown.split(f"## Study {STUDY} (run xray_cnn)", 1)[1].split("\n## ", 1)[0]
    assert "| learning_rate | 0.0001 to 0.01 (log scale) | 0.001235 |" in section
    assert "| batch_size | one of 8, 16 | 16 |" in section
    assert "| 2 | 1 | 0 | 0.9100 | 1 | 23 |" in section
    assert "| untuned | [xray_cnn [sample]](" in section and "| 2 | 72.00 ± 2.83 % |" in section
    assert "| best values | [xray_cnn_search_best [sample]](" in section
    assert "| 3 | 82.00 ± 2.00 % |" in section
    # 2 complete trials: the importances are left out, and the report says why
    assert f"below {MIN_TRIALS_FOR_IMPORTANCES} they are noise" in section
    html = to_html(report)
    assert f"Optimisation history, study {STUDY}" in html
    assert f"Parameter importances (fANOVA), study {STUDY}" not in html
    # the other study has neither run nor confirmation yet
    other = markdown.split("## Study mri_cnn_search (run mri_cnn)", 1)[1]
    assert "Trials not available: the study has not been confirmed yet" in other


def test_the_study_comparison_is_measured_and_in_comparisons(filled: Store) -> None:
    params = parse_params(read_yaml(REPO / "params.yaml"))
    configs = collect_configurations(filled.client, params)
    (record,) = [r for r in collect_studies(filled.client, params, configs) if r.name == STUDY]
    (comparison,) = record.comparisons
    assert (comparison.spec.reference, comparison.spec.candidate) == ("xray_cnn", f"{STUDY}_best")
    assert comparison.difference("accuracy") == pytest.approx(0.82 - 0.72)
    # no per-image predictions in this store: the difference of the logged means only
    assert comparison.paired is None
