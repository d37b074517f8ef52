"""`medimg report` on a real sqlite MLflow store holding synthetic runs of known values.

The store (report_support.Store) is made with MlflowClient the way the train and
evaluate stages fill it: a parent run per configuration (tags, run.* params,
evaluation/ files) and a child per repeat with its metrics; no per-image predictions
here (tests/test_report_comparisons.py has them). Expected numbers are worked out by
hand below.
"""

from __future__ import annotations

import json
import math
import socket
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from medimg.cli import main
from medimg.config.params import Params, parse_params
from medimg.evaluation.statistics import summarize, t_critical
from medimg.reporting import ReportError
from medimg.reporting.collect import collect_configurations
from medimg.reporting.report import build_report, write_report
from medimg.reporting.tables import thesis_table
from medimg.reporting.thesis import THESIS_RESULTS_FILE, load_thesis_results
from report_support import Store

XRAY_CLASSES = ["NORMAL", "PNEUMONIA"]
MRI_CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
UI = "http://mlflow.example.org:5000"
H200 = "gpu:0 (NVIDIA H200)"


def params_dict() -> dict:
    def dataset(layout: str, classes: list[str], channels: int, protocol: str) -> dict:
        return {
            "layout": layout,
            "classes": classes,
            "channels": channels,
            "fetch": {"source": "unused.zip"},
            "split": {"protocols": [protocol, "thesis"]},
            "prepare": {"image_size": 64},
        }

    def run(dataset_name: str, model: str, protocol: str) -> dict:
        return {
            "dataset": dataset_name,
            "split_protocol": protocol,
            "model": model,
            "epochs": 10,
            "batch_size": 8,
        }

    return {
        "profile": "sample",
        "datasets": {
            "chest_xray": dataset("chest_xray", XRAY_CLASSES, 1, "official"),
            "brain_tumor_mri": dataset("mri", MRI_CLASSES, 3, "pooled"),
        },
        "runs": {
            "xray_cnn": run("chest_xray", "xray_cnn", "official"),
            "xray_cnn_aug": run("chest_xray", "xray_cnn", "official"),
            "xray_cnn_aug_thesis": run("chest_xray", "xray_cnn", "thesis"),
            "mri_cnn": run("brain_tumor_mri", "mri_cnn", "pooled"),
            "mri_cnn_thesis": run("brain_tumor_mri", "mri_cnn", "thesis"),
        },
        "profiles": {
            "full": {
                "datasets.chest_xray.prepare.image_size": 600,
                "datasets.brain_tumor_mri.prepare.image_size": 224,
                "runs.xray_cnn_aug.epochs": 20,
                "runs.xray_cnn_aug_thesis.epochs": 20,
                "runs.mri_cnn_thesis.epochs": 40,
            }
        },
    }


def xray_metrics(accuracy: float) -> dict:
    return {
        "test_accuracy": accuracy,
        "val_accuracy": 0.95,
        "best_train_accuracy": 0.97,
        "test_roc_auc": 0.98,
        "test_recall": 0.99,
        "test_specificity": 0.80,
        "test_balanced_accuracy": 0.895,
        "images_per_second": 2400.0,
        "train_seconds": 30.0,
    }


FULL_GPU = {
    "medimg.profile": "full",
    "medimg.device": H200,
    "medimg.keras_backend": "jax",
    "medimg.git_commit": "0123456789abcdef",
    "medimg.git_dirty": "false",
}
FULL_PARAMS = {"run.epochs": 20, "run.image_size": "null", "prepare.image_size": 600}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Built once (creating a sqlite store takes seconds); the tests only read it.

    chest_xray: xray_cnn not trained; xray_cnn_aug (official) test accuracy 0.90, 0.92,
    0.94; xray_cnn_aug_thesis (thesis protocol) 0.96, 0.97, 0.98; both full profile.
    brain_tumor_mri: mri_cnn trained, not evaluated; mri_cnn_thesis one sample repeat;
    efficientnet_b0 imported twice from the H200 (the later one counts) and once from a CPU.
    """
    s = Store(tmp_path_factory.mktemp("report"))
    for run, protocol, accuracies in (
        ("xray_cnn_aug", "official", (0.90, 0.92, 0.94)),
        ("xray_cnn_aug_thesis", "thesis", (0.96, 0.97, 0.98)),
    ):
        tags = {**FULL_GPU, "medimg.split_protocol": protocol}
        parent = s.parent("chest_xray", run, tags, FULL_PARAMS)
        for seed, accuracy in enumerate(accuracies):
            s.child("chest_xray", parent, seed, xray_metrics(accuracy))
        s.evaluation_files(parent, XRAY_CLASSES, [0, 1, 1, 1])
        s.summary_json(run, parent)

    parent = s.parent("brain_tumor_mri", "mri_cnn", {"medimg.split_protocol": "pooled"}, {})
    for seed in (0, 1):
        s.child("brain_tumor_mri", parent, seed, {"best_val_auc": 0.9, "train_seconds": 5.0})
    s.summary_json("mri_cnn", parent)

    sample = {"medimg.profile": "sample", "medimg.split_protocol": "thesis"}
    parent = s.parent("brain_tumor_mri", "mri_cnn_thesis", sample, {"run.epochs": 10})
    # NaN: a training without an accuracy log; it must read as missing, not break the report.
    nan = {"best_train_accuracy": math.nan}
    s.child("brain_tumor_mri", parent, 0, {"test_accuracy": 0.5, "test_roc_auc": 0.7, **nan})
    s.summary_json("mri_cnn_thesis", parent)

    imported = {
        "medimg.imported": "true",
        "medimg.profile": "full",
        "medimg.split_protocol": "pooled",
    }
    for device, accuracy in ((H200, 0.80), (H200, 0.99), ("cpu:0", 0.70)):
        tags = {**imported, "medimg.device": device}
        params = {"run.model_options.weights": "imagenet", "run.epochs": 40}
        parent = s.parent("brain_tumor_mri", "efficientnet_b0", tags, params)
        recalls = {f"test_recall_{c}": 0.9 + 0.02 * k for k, c in enumerate(MRI_CLASSES)}
        s.child("brain_tumor_mri", parent, 0, {"test_accuracy": accuracy, **recalls})
        s.child("brain_tumor_mri", parent, 1, {"test_accuracy": accuracy, **recalls})
        s.evaluation_files(parent, MRI_CLASSES, [0, 1, 2, 3, 0, 1, 2, 2])
    return s


@pytest.fixture
def at_store(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """paths and tracking_uri() point at the store's root; MLflow links at UI."""
    monkeypatch.setenv("MEDIMG_ROOT", str(store.root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_UI_URL", UI)
    return store


@pytest.fixture
def params() -> Params:
    return parse_params(params_dict())


def test_summary_matches_hand_arithmetic() -> None:
    result = summarize([0.90, 0.92, 0.94])
    assert result.mean == pytest.approx(0.92)
    assert result.std == pytest.approx(0.02)
    assert t_critical(3) == pytest.approx(4.303, abs=5e-4)
    assert result.ci_half_width == pytest.approx(4.303 * 0.02 / math.sqrt(3), rel=1e-4)
    single = summarize([0.5])
    assert (single.mean, single.std, single.ci_low) == (0.5, None, None)
    with pytest.raises(ValueError, match="finite"):
        summarize([0.5, math.nan])


def test_configurations_and_their_status(at_store: Store, params: Params) -> None:
    configs = collect_configurations(at_store.client, params)
    status = {c.label: c.status for c in configs}
    assert status == {
        "xray_cnn": "not trained",
        "xray_cnn_aug": "evaluated",
        "xray_cnn_aug_thesis": "evaluated",
        "mri_cnn": "not evaluated",
        "mri_cnn_thesis": "evaluated",
        f"efficientnet_b0 (imported, {H200})": "evaluated",
        "efficientnet_b0 (imported, cpu:0)": "evaluated",
    }
    imported = next(c for c in configs if c.label.endswith(f"{H200})"))
    assert imported.summary("test_accuracy").mean == pytest.approx(0.99)  # the later import
    assert imported.weights == "imagenet"
    aug = next(c for c in configs if c.name == "xray_cnn_aug")
    assert aug.image_size == 600 and aug.epochs == 20
    assert aug.confusion.tolist() == [[1, 1], [0, 2]]
    assert aug.ui_url() == f"{UI}/#/experiments/{aug.experiment_id}/runs/{aug.parent_run_id}"


def test_thesis_table_rows_and_interval(at_store: Store, params: Params) -> None:
    configs = collect_configurations(at_store.client, params)
    thesis = load_thesis_results()
    xray = [c for c in configs if c.dataset == "chest_xray"]
    table = thesis_table(thesis.datasets["chest_xray"], xray, {}, thesis.source)
    rows = {row.cells[0].text: [cell.text for cell in row.cells] for row in table.rows}
    # 0.90, 0.92, 0.94: mean 0.92, std 0.02, 95 % CI 0.92 ± 4.303 · 0.02 / √3 = ± 0.04968
    assert rows["xray_cnn_aug"][1:] == [
        "official (leak-free)",
        "full: 600 px, 20 epochs",
        "3",
        "97.00 ± 0.00 %",
        "95.00 ± 0.00 %",
        "92.00 ± 2.00 %",
        "87.03 – 96.97 %",
        "-1.75 pp",  # 92.00 − 93.75 (the thesis's augmented row)
    ]
    assert rows["xray_cnn_aug_thesis"][6:] == ["97.00 ± 1.00 %", "94.52 – 99.48 %", "+3.25 pp"]
    assert rows["xray_cnn"][1:] == ["not trained"] + ["—"] * 7
    thesis_rows = [row for row in table.rows if row.kind == "thesis"]
    assert [row.cells[6].text for row in thesis_rows] == ["75.80 %", "93.75 %"]


def test_report_files(at_store: Store, params: Params) -> None:
    written = write_report(params)
    names = ("report.md", "report.html", "comparisons.json")
    assert written == [at_store.root / "reports" / n for n in names]
    markdown = written[0].read_text()
    # mri_cnn was trained, not evaluated; mri_cnn_official is named by the thesis file only.
    assert "| [mri_cnn](" in markdown and "| not evaluated |" in markdown
    assert "| mri_cnn_official | not run |" in markdown
    assert "Rows and figures marked [sample]" in markdown
    assert "mri_cnn_thesis [sample]" in markdown
    assert "| — (1 repeat) |" in markdown  # mri_cnn_thesis: one repeat, no interval
    # The comparison xray_cnn_aug (0.92) − xray_cnn_aug_thesis (0.97): no per-image
    # predictions in this store, so the difference of the means and no interval.
    lacking = "no per-image predictions (xray_cnn_aug_thesis, xray_cnn_aug)"
    assert f"| {lacking} | -5.00 pp (no interval) |" in markdown
    entries = json.loads(written[2].read_text())["comparisons"]
    leakage = next(e for e in entries if e["reference"]["configuration"] == "xray_cnn_aug_thesis")
    accuracy = leakage["results"][0]
    assert accuracy["difference"] == pytest.approx(-0.05)
    assert (accuracy["ci_low"], accuracy["method"], leakage["paired"]) == (None, lacking, None)
    # xray_cnn is not trained: its pair says so and measures nothing.
    augmentation = next(e for e in entries if e["reference"]["configuration"] == "xray_cnn")
    assert (augmentation["status"], augmentation["results"]) == ("xray_cnn not trained", [])
    assert "efficientnet_b0 (imported, cpu:0)" in markdown
    assert not list((at_store.root / "reports").glob(".*"))  # no temporary files left


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [(name, value or "") for name, value in attrs if name in ("src", "href")]


def test_html_is_self_contained(at_store: Store, params: Params) -> None:
    html = write_report(params)[1].read_text()
    parser = _Links()
    parser.feed(html)
    assert "script" not in parser.tags and "link" not in parser.tags
    sources = [url for name, url in parser.urls if name == "src"]
    links = [url for name, url in parser.urls if name == "href"]
    # Two figures per dataset: ROC and confusion matrices, embedded as PNG.
    assert len(sources) == 4
    assert all(url.startswith("data:image/png;base64,") for url in sources)
    assert links and all(url.startswith(f"{UI}/#/experiments/") for url in links)
    assert "url(" not in html and "@import" not in html


def test_sample_banner_only_with_sample_rows(at_store: Store, params: Params) -> None:
    configs = collect_configurations(at_store.client, params)
    thesis = load_thesis_results()
    full_only = [c for c in configs if c.tag("profile") != "sample"]
    banners = build_report(params, configs, thesis, at_store.uri, datetime.now(UTC)).banners
    assert any("test the pipeline, not the models" in b for b in banners)
    report = build_report(params, full_only, thesis, at_store.uri, datetime.now(UTC))
    assert not any("test the pipeline" in b for b in report.banners)


def test_summary_naming_a_run_the_store_lacks(at_store: Store, params: Params) -> None:
    raw = params_dict()
    raw["runs"]["ghost"] = raw["runs"]["xray_cnn"]
    folder = at_store.root / "models" / "ghost"
    folder.mkdir()
    try:
        (folder / "summary.json").write_text(json.dumps({"parent_run_id": "0" * 32}))
        with pytest.raises(ReportError, match=r"ghost/summary\.json.*not in the tracking store"):
            write_report(parse_params(raw))
    finally:
        (folder / "summary.json").unlink()
        folder.rmdir()


def test_a_bad_thesis_file_leaves_the_previous_report(
    at_store: Store, params: Params, tmp_path: Path
) -> None:
    previous = write_report(params)
    before = [path.read_text() for path in previous]
    raw = yaml.safe_load(THESIS_RESULTS_FILE.read_text())
    raw["datasets"]["chest_xray"]["rows"][0]["test_accuracy"] = 75.8  # percent, not a fraction
    bad = tmp_path / "thesis.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ReportError, match=r"thesis\.yaml.*test_accuracy = 75\.8"):
        write_report(params, bad)
    assert [path.read_text() for path in previous] == before


def _write_params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params_dict()))
    return path


def test_unreachable_store_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    assert main(["--params", str(_write_params(tmp_path)), "report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medimg report: error:") and f"127.0.0.1:{port}" in err
    assert "\n" not in err
    assert not (tmp_path / "reports").exists()


def test_missing_sqlite_store_is_an_error_not_an_empty_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["--params", str(_write_params(tmp_path)), "report"]) == 2
    err = capsys.readouterr().err
    assert "no database at" in err and "mlflow.db" in err
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()
