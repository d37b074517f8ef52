"""The report's comparisons: intervals and p-values against hand-computed cases, the flags.

The statistics (medimg.reporting.differences) are checked on cases small enough to
work out by hand; then a real sqlite MLflow store holding per-image test predictions
goes through `write_report`, and its comparisons.json must carry the same numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medimg.config.params import Params, parse_params
from medimg.evaluation.metrics import classification_metrics
from medimg.evaluation.test_predictions import (
    N_TEST_IMAGES_METRIC,
    TestPredictions,
    read_test_predictions,
    write_test_predictions,
)
from medimg.reporting.collect import Configuration
from medimg.reporting.differences import (
    SeedPredictions,
    bootstrap_differences,
    delong_test,
    pairwise_order,
    weighted_auc,
)
from medimg.reporting.flags import SINGLE_CLASS, VAL_AUC_STUCK, model_flags
from medimg.reporting.report import write_report
from report_support import Store

XRAY = ["NORMAL", "PNEUMONIA"]
MRI = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]

# Ten X-ray test images, five per class, and P(PNEUMONIA) of two models on them. They
# differ on image 0 only (NORMAL): the reference calls it PNEUMONIA (0.6), the candidate
# NORMAL (0.45). Reference accuracy 8/10 (images 0 and 8 wrong), candidate 9/10.
LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
REFERENCE_P = np.array([0.6, 0.2, 0.3, 0.1, 0.4, 0.9, 0.8, 0.7, 0.35, 0.65])
CANDIDATE_P = np.where(np.arange(10) == 0, 0.45, REFERENCE_P)
PATHS = [f"images/test/{XRAY[y]}/{k}.jpeg" for k, y in enumerate(LABELS)]


def _binary(p_positive: np.ndarray) -> np.ndarray:
    return np.column_stack([1 - p_positive, p_positive])


def _side(*p_positive: np.ndarray, labels: np.ndarray = LABELS) -> SeedPredictions:
    """One seed per array of P(positive); predicted = the argmax, as the evaluate stage."""
    proba = np.stack([_binary(p) for p in p_positive])
    return SeedPredictions(labels=labels, predicted=proba.argmax(axis=2), proba=proba)


def test_paired_interval_of_one_changed_image_by_hand() -> None:
    """Δ accuracy = 9/10 − 8/10 = +0.1. Paired, a replicate's Δ is (how often image 0 is
    drawn) / 10, and image 0 is drawn among the 5 NORMAL images: Binomial(5, 1/5) times,
    P = 0.328, 0.410, 0.205, 0.051, 0.006 for 0..4. Its 2.5 % quantile is 0 and its
    97.5 % quantile 3 (cumulative 0.942 at 2, 0.993 at 3): the interval is [0, 0.3].
    Unpaired, the sides' images are drawn apart and the interval reaches below 0.
    The ROC AUC is 23/25 on both sides (image 0 ranks the same against every positive),
    so its Δ is 0 in every replicate."""
    reference, candidate = _side(REFERENCE_P), _side(CANDIDATE_P)
    paired = bootstrap_differences(reference, candidate, paired=True)
    assert paired["accuracy"].difference == pytest.approx(0.1)
    assert (paired["accuracy"].low, paired["accuracy"].high) == pytest.approx((0.0, 0.3))
    assert paired["roc_auc"].difference == pytest.approx(0.0)
    assert (paired["roc_auc"].low, paired["roc_auc"].high) == pytest.approx((0.0, 0.0))
    assert roc_auc_score(LABELS, REFERENCE_P) == pytest.approx(23 / 25)
    unpaired = bootstrap_differences(reference, candidate, paired=False)
    assert unpaired["accuracy"].difference == pytest.approx(0.1)
    assert unpaired["accuracy"].low < 0 < unpaired["accuracy"].high
    assert unpaired["accuracy"].high - unpaired["accuracy"].low > 0.3


def test_seed_level_of_the_bootstrap_by_hand() -> None:
    """Reference: one seed right on every image (accuracy 1). Candidate: two seeds, one
    right on every image, one wrong on every image: seed mean 0.5, Δ = −0.5. Whatever
    images are drawn, a replicate's Δ is the mean of two candidate seeds drawn with
    replacement minus 1: 0 (both the good seed, P 1/4), −0.5 (1/2), −1 (1/4), so the
    95 % interval is [−1, 0]. Resampling the images alone would give [−0.5, −0.5]."""
    right = np.where(LABELS == 1, 0.9, 0.1)
    wrong = 1 - right
    result = bootstrap_differences(_side(right), _side(right, wrong), paired=True)
    accuracy = result["accuracy"]
    assert (accuracy.difference, accuracy.low, accuracy.high) == pytest.approx((-0.5, -1.0, 0.0))


def test_estimates_are_the_seed_means_of_the_logged_metrics() -> None:
    """The point estimate is the mean over seeds of what classification_metrics logs:
    accuracy, and ROC AUC (multiclass: the macro mean of the one-vs-rest AUCs)."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 6)
    sides = []
    for _ in range(2):
        proba = rng.dirichlet(np.ones(4), size=(3, len(labels)))
        sides.append(SeedPredictions(labels, proba.argmax(axis=2), proba))
    result = bootstrap_differences(*sides, paired=True, replicates=50)
    for metric in ("accuracy", "roc_auc"):
        means = [
            np.mean([classification_metrics(labels, p, MRI)[metric] for p in side.proba])
            for side in sides
        ]
        assert result[metric].difference == pytest.approx(means[1] - means[0])
        assert result[metric].low <= result[metric].high


def test_weighted_auc_is_roc_auc_with_sample_weights() -> None:
    """A replicate's AUC (resample counts as weights, ties counted half) is scikit-learn's."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    scores = np.round(rng.random(40), 1)  # many ties
    weights = rng.integers(0, 4, size=(5, 40)).astype(float)
    psi = pairwise_order(scores[labels == 1], scores[labels == 0])
    ours = weighted_auc(psi, weights[:, labels == 1], weights[:, labels == 0])
    theirs = [roc_auc_score(labels, scores, sample_weight=w) for w in weights]
    assert ours == pytest.approx(theirs)


def test_delong_by_hand() -> None:
    """Positives score (0.9, 0.6) and (0.8, 0.4), negatives (0.7, 0.2) and (0.5, 0.45).
    ψ: reference [[1, 0], [1, 1]] -> AUC 3/4, V10 (1, 1/2), V01 (1/2, 1); candidate
    [[1, 0], [1, 0]] -> AUC 1/2, V10 (1, 0), V01 (1/2, 1/2). Sample (co)variances: V10
    1/8, 1/2, cov 1/4 -> (1/8 + 1/2 − 1/2) / 2 = 1/16; V01 1/8, 0, 0 -> 1/16. Var Δ = 1/8,
    z = −0.25 / √(1/8) = −1/√2, p = 2 Φ(−0.7071) = 0.4795. Unpaired: the four variances
    add, (1/8 + 1/8) / 2 + (1/2 + 0) / 2 = 3/8, z = −0.25 / √(3/8) = −0.4082, p = 0.6831."""
    labels = np.array([1, 1, 0, 0])
    reference = np.array([0.9, 0.6, 0.7, 0.2])
    candidate = np.array([0.8, 0.4, 0.5, 0.45])
    paired = delong_test(labels, reference, labels, candidate, paired=True)
    assert (paired.auc_reference, paired.auc_candidate) == (0.75, 0.5)
    assert paired.z == pytest.approx(-1 / math.sqrt(2))
    assert paired.p_value == pytest.approx(0.4795, abs=1e-4)
    unpaired = delong_test(labels, reference, labels, candidate, paired=False)
    assert unpaired.z == pytest.approx(-0.25 / math.sqrt(3 / 8))
    assert unpaired.p_value == pytest.approx(0.6831, abs=1e-4)
    same = delong_test(labels, reference, labels, reference, paired=True)
    assert (same.difference, same.p_value) == (0.0, None)  # no variance: no p-value


def test_paired_sides_must_share_their_labels() -> None:
    flipped = _side(REFERENCE_P, labels=1 - LABELS)
    with pytest.raises(ValueError, match="same test labels"):
        bootstrap_differences(_side(REFERENCE_P), flipped, paired=True)


def test_test_predictions_file_round_trip(tmp_path: Path) -> None:
    """float32 probabilities (a model's output) read back as the same float32 values, so
    their order and ties (what ROC AUC sees) are kept."""
    proba = _binary(REFERENCE_P / 3).astype(np.float32)
    path = tmp_path / "test_predictions.csv"
    write_test_predictions(path, PATHS, LABELS, proba.argmax(1), proba, XRAY)
    read = read_test_predictions(path, XRAY)
    assert read.paths == tuple(PATHS) and read.labels.tolist() == LABELS.tolist()
    assert read.predicted.tolist() == proba.argmax(1).tolist()
    assert np.array_equal(read.proba.astype(np.float32), proba)
    with pytest.raises(ValueError, match="columns"):
        read_test_predictions(path, MRI)


# --- flags --------------------------------------------------------------------------


def _config(**fields) -> Configuration:
    base = {"name": "run", "dataset": "chest_xray", "status": "evaluated", "classes": tuple(XRAY)}
    return Configuration(**{**base, **fields})


def test_single_class_flag_from_predictions_and_from_recalls() -> None:
    always_pneumonia = TestPredictions(
        paths=tuple(PATHS),
        labels=LABELS,
        predicted=np.ones(10, dtype=np.int64),
        proba=_binary(np.full(10, 0.7)),
    )
    learned = TestPredictions(tuple(PATHS), LABELS, LABELS.copy(), _binary(REFERENCE_P))
    config = _config(children=({}, {}), seeds=(3, 4), test_predictions=(learned, always_pneumonia))
    (flag,) = model_flags(config)
    assert flag.tag == SINGLE_CLASS
    assert "seed 4 calls every test image pneumonia" in flag.detail
    assert "seed 3" not in flag.detail
    assert model_flags(_config(children=({},), seeds=(3,), test_predictions=(learned,))) == []
    # Without per-image predictions: sensitivity 0 and specificity 100 % say the same.
    recalls = {"test_recall": 0.0, "test_specificity": 1.0}
    (flag,) = model_flags(_config(children=(recalls,), seeds=(0,)))
    assert "seed 0 calls every test image normal (from its per-class recalls)" in flag.detail
    assert model_flags(_config(children=({"test_recall": 0.2, "test_specificity": 1.0},))) == []


def test_validation_auc_stuck_at_one_half_is_flagged() -> None:
    stuck = _config(children=({}, {}), seeds=(0, 1), val_auc_histories=((0.5, 0.5, 0.505), (0.8,)))
    (flag,) = model_flags(stuck)
    assert flag.tag == VAL_AUC_STUCK and "seed 0 never rose above 0.51" in flag.detail
    moving = _config(children=({},), seeds=(0,), val_auc_histories=((0.5, 0.52),))
    assert model_flags(moving) == []


# --- through a real MLflow store -----------------------------------------------------


def _params() -> Params:
    def run(protocol: str, epochs: int) -> dict:
        return {
            "dataset": "chest_xray",
            "split_protocol": protocol,
            "model": "xray_cnn",
            "epochs": epochs,
            "batch_size": 8,
        }

    dataset = {
        "layout": "chest_xray",
        "classes": XRAY,
        "channels": 1,
        "fetch": {"source": "unused.zip"},
        "split": {"protocols": ["official", "thesis"]},
        "prepare": {"image_size": 64},
    }
    return parse_params(
        {
            "profile": "sample",
            "datasets": {"chest_xray": dataset},
            "runs": {
                "xray_cnn": run("official", 10),
                "xray_cnn_aug": run("official", 10),
                "xray_cnn_aug_thesis": run("thesis", 2),
            },
            "profiles": {"sample": {}},
        }
    )


# The thesis-protocol run: six other images (three per class), every one called
# PNEUMONIA (P 0.55..0.9): accuracy 1/2, ROC AUC 8/9, validation AUC 0.5 throughout.
THESIS_LABELS = np.array([0, 0, 0, 1, 1, 1])
THESIS_P = np.array([0.6, 0.7, 0.55, 0.8, 0.65, 0.9])
THESIS_PATHS = [f"images/train/{XRAY[y]}/t{k}.jpeg" for k, y in enumerate(THESIS_LABELS)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """xray_cnn and xray_cnn_aug: one seed each on the ten images above (the paired
    hand-computed case); xray_cnn_aug_thesis: one seed, 2 epochs, on six other images."""
    s = Store(tmp_path_factory.mktemp("comparisons"))
    tags = {"medimg.profile": "sample", "medimg.device": "cpu:0"}
    runs = (
        ("xray_cnn", "official", 10, LABELS, REFERENCE_P, PATHS, (0.7, 0.9)),
        ("xray_cnn_aug", "official", 10, LABELS, CANDIDATE_P, PATHS, (0.8, 0.9)),
        ("xray_cnn_aug_thesis", "thesis", 2, THESIS_LABELS, THESIS_P, THESIS_PATHS, (0.5, 0.5)),
    )
    for run, protocol, epochs, labels, p_positive, paths, val_auc in runs:
        params = {"run.epochs": epochs, "run.image_size": "null", "prepare.image_size": 64}
        parent = s.parent("chest_xray", run, {**tags, "medimg.split_protocol": protocol}, params)
        proba = _binary(p_positive)
        metrics = classification_metrics(labels, proba, XRAY)
        logged = {f"test_{k}": metrics[k] for k in ("accuracy", "roc_auc", "recall", "specificity")}
        child = s.child(
            "chest_xray",
            parent,
            0,
            {**logged, N_TEST_IMAGES_METRIC: len(labels)},
            val_auc=val_auc,
        )
        s.test_predictions(child, paths, labels, proba, XRAY)
        s.summary_json(run, parent)
    return s


@pytest.fixture
def written(store: Store, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("MEDIMG_ROOT", str(store.root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    markdown, _, comparisons = write_report(_params())
    return {"markdown": markdown.read_text(), "json": json.loads(comparisons.read_text())}


def _entry(written: dict, reference: str) -> dict:
    (entry,) = [
        e for e in written["json"]["comparisons"] if e["reference"]["configuration"] == reference
    ]
    return entry


def test_report_gives_the_hand_computed_paired_interval(written: dict) -> None:
    entry = _entry(written, "xray_cnn")
    assert entry["candidate"]["configuration"] == "xray_cnn_aug"
    assert (entry["paired"], entry["like_for_like"], entry["differs"]) == (True, True, {})
    accuracy, auc, delong = entry["results"]
    assert accuracy["metric"] == "test_accuracy" and "two-level bootstrap" in accuracy["method"]
    assert (accuracy["difference"], accuracy["ci_low"], accuracy["ci_high"]) == pytest.approx(
        (0.1, 0.0, 0.3)
    )
    assert (auc["difference"], auc["ci_low"], auc["ci_high"]) == pytest.approx((0, 0, 0))
    # Both rank every pair alike: DeLong's variance is 0, no p-value.
    assert (delong["metric"], delong["p_value"]) == ("test_roc_auc_ensemble", None)
    assert "| paired: the same 10 | +10.00 pp [+0.00, +30.00] |" in written["markdown"]


def test_report_marks_an_unpaired_unlike_comparison(written: dict) -> None:
    entry = _entry(written, "xray_cnn_aug_thesis")
    assert (entry["paired"], entry["like_for_like"]) == (False, False)
    assert entry["differs"] == {"epochs": [2, 10]}
    assert entry["intended_differences"] == {
        "test_images": [6, 10],
        "split_protocol": ["thesis", "official"],
    }
    accuracy, _, delong = entry["results"]
    assert accuracy["difference"] == pytest.approx(0.9 - 0.5)
    expected = delong_test(
        THESIS_LABELS, THESIS_P, LABELS, CANDIDATE_P, paired=False
    )  # one seed a side: the seed mean is the seed
    assert delong["difference"] == pytest.approx(expected.difference)
    assert delong["p_value"] == pytest.approx(expected.p_value)
    assert "unpaired" in delong["method"]
    row = next(line for line in written["markdown"].splitlines() if "NO: epochs 2 vs 10" in line)
    assert "test images 6 vs 10 (intended)" in row and "| unpaired: 6 vs 10 |" in row


def test_report_flags_the_single_class_model(written: dict) -> None:
    markdown = written["markdown"]
    flagged = f"xray_cnn_aug_thesis [sample] [{SINGLE_CLASS}] [{VAL_AUC_STUCK}]"
    assert flagged in markdown
    assert "Warning, xray_cnn_aug_thesis: seed 0 calls every test image pneumonia." in markdown
    assert "[xray_cnn_aug [sample]](" in markdown  # its name cell: no flag
    (side,) = [e["reference"] for e in written["json"]["comparisons"] if e["reference"]["flags"]]
    assert side["configuration"] == "xray_cnn_aug_thesis" and len(side["flags"]) == 2
    assert side["settings"]["test_images"] == 6
