"""The pairs of thesis_results.yaml's `comparisons`, matched to runs and measured.

For each pair (Δ = candidate − reference) and each setting in which both were
trained (origin, device and profile: a sample run is never set against a full one,
nor a GPU import against a CPU run), a `Comparison` holds:

- both sides' training settings (epochs, image size, test-set size, split protocol,
  profile, device) and those that differ. A difference the pair is not meant to
  test (its `varies`) makes it not like-for-like: Δ is still given, marked;
- paired or not: paired when both sides' per-image test predictions name the same
  images in the same order, so the bootstrap draws the same images for both;
- Δ of the seed-mean test accuracy and ROC AUC with the two-level bootstrap
  interval of `differences`, and for two classes DeLong's p-value of the ensembles'
  AUC. Without per-image predictions on both sides only the difference of the
  logged means is known: the comparison says so.

`comparison_records` is the same content as JSON-ready dicts (reports/comparisons.json).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medimg.evaluation.statistics import CONFIDENCE
from medimg.reporting import ReportError
from medimg.reporting.collect import Configuration
from medimg.reporting.differences import (
    BOOTSTRAP_REPLICATES,
    BOOTSTRAP_SEED,
    METRICS,
    DeLongTest,
    Interval,
    SeedPredictions,
    bootstrap_differences,
    delong_test,
)
from medimg.reporting.flags import model_flags
from medimg.reporting.thesis import ComparisonSpec

# Each setting's name (as in thesis_results.yaml's `varies`), its label, how to read it.
SETTINGS: dict[str, tuple[str, Callable[[Configuration], Any]]] = {
    "epochs": ("epochs", lambda c: c.epochs),
    "image_size": ("image size (px)", lambda c: c.image_size),
    "test_images": ("test images", lambda c: c.test_images),
    "split_protocol": ("split protocol", lambda c: c.tag("split_protocol")),
    "profile": ("profile", lambda c: c.tag("profile")),
    "device": ("device", lambda c: c.tag("device")),
}
LOGGED_METRIC = {"accuracy": "test_accuracy", "roc_auc": "test_roc_auc"}
NO_PREDICTIONS = "no per-image predictions"
BOOTSTRAP_METHOD = (
    "two-level bootstrap: test images resampled within each class (the same draws for "
    "both sides when paired), each side's seeds resampled independently; "
    "{replicates} replicates, percentile interval"
)
DELONG_METHOD = "DeLong's test ({pairing}) of the seed-averaged probabilities' ROC AUC"


@dataclass(frozen=True)
class Comparison:
    """One pair of configurations in one setting; `status` says why nothing was measured."""

    dataset: str
    spec: ComparisonSpec
    reference: Configuration | None = None
    candidate: Configuration | None = None
    status: str = "compared"
    differs: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    intended: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    paired: bool | None = None
    means: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    intervals: dict[str, Interval] = field(default_factory=dict)
    delong: DeLongTest | None = None
    note: str | None = None

    @property
    def like_for_like(self) -> bool:
        return not self.differs

    def difference(self, metric: str) -> float | None:
        """Δ of `metric`: the bootstrap's estimate, else the difference of the logged means."""
        if metric in self.intervals:
            return self.intervals[metric].difference
        reference, candidate = self.means.get(metric, (None, None))
        return None if reference is None or candidate is None else candidate - reference


def _same_setting(a: Configuration, b: Configuration) -> bool:
    """Trained in the same place and profile: same origin, device and profile."""
    return (a.imported, a.tag("device"), a.tag("profile")) == (
        b.imported,
        b.tag("device"),
        b.tag("profile"),
    )


def seed_predictions(config: Configuration) -> tuple[tuple[str, ...], SeedPredictions] | None:
    """(image paths, every seed's predictions) of `config`; None without per-image files.

    The seeds of one configuration were predicted on the same prepared arrays, so they
    must name the same images with the same labels: a ReportError says when not.
    """
    if not config.test_predictions:
        return None
    first = config.test_predictions[0]
    for seed, other in zip(config.seeds, config.test_predictions, strict=True):
        if other.paths != first.paths or not np.array_equal(other.labels, first.labels):
            raise ReportError(
                f"{config.label} (parent run {config.parent_run_id}): seed {seed}'s test "
                "predictions are on other images than its first seed's"
            )
    return first.paths, SeedPredictions(
        labels=first.labels,
        predicted=np.stack([p.predicted for p in config.test_predictions]),
        proba=np.stack([p.proba for p in config.test_predictions]),
    )


def _settings_differences(
    spec: ComparisonSpec, reference: Configuration, candidate: Configuration
) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
    """(unintended, intended) settings that differ: {name: (reference's, candidate's)}."""
    differs, intended = {}, {}
    for name, (_, read) in SETTINGS.items():
        values = (read(reference), read(candidate))
        if values[0] != values[1]:
            (intended if name in spec.varies else differs)[name] = values
    return differs, intended


def _measure(
    dataset: str, spec: ComparisonSpec, reference: Configuration, candidate: Configuration
) -> Comparison:
    """Settings, pairing, Δ and its interval of one matched pair of evaluated configurations."""
    differs, intended = _settings_differences(spec, reference, candidate)
    means = {
        metric: tuple(
            summary.mean if (summary := side.summary(key)) else None
            for side in (reference, candidate)
        )
        for metric, key in LOGGED_METRIC.items()
    }
    found = [seed_predictions(reference), seed_predictions(candidate)]
    common = {"dataset": dataset, "spec": spec, "reference": reference, "candidate": candidate}
    common |= {"differs": differs, "intended": intended, "means": means}
    if None in found:
        lacking = [c.label for c, f in zip((reference, candidate), found, strict=True) if f is None]
        return Comparison(**common, note=f"{NO_PREDICTIONS} ({', '.join(lacking)})")
    (paths_r, ref), (paths_c, cand) = found
    paired = paths_r == paths_c
    if paired and not np.array_equal(ref.labels, cand.labels):
        raise ReportError(
            f"{reference.label} and {candidate.label}: the same test images with other labels"
        )
    intervals = bootstrap_differences(ref, cand, paired)
    delong = None
    if ref.proba.shape[2] == 2 and "roc_auc" in intervals:
        # one score per image and side: the seeds' mean probability of the positive class
        scores = [side.proba[:, :, 1].mean(axis=0) for side in (ref, cand)]
        delong = delong_test(ref.labels, scores[0], cand.labels, scores[1], paired)
    return Comparison(**common, paired=paired, intervals=intervals, delong=delong)


def _unmatched(
    dataset: str, spec: ComparisonSpec, references: list, candidates: list
) -> Comparison | None:
    """Why a pair has nothing to compare, or None when it has."""
    for name, found in ((spec.reference, references), (spec.candidate, candidates)):
        if not found:
            return Comparison(dataset, spec, status=f"{name} not run")
        if not any(c.status == "evaluated" for c in found):
            return Comparison(dataset, spec, status=f"{name} {found[0].status}")
    return None


def compare(
    dataset: str, specs: Sequence[ComparisonSpec], configs: Sequence[Configuration]
) -> list[Comparison]:
    """Every pair of `specs` in every setting both were trained in, in `specs`' order."""
    found = []
    for spec in specs:
        references = [c for c in configs if c.name == spec.reference]
        candidates = [c for c in configs if c.name == spec.candidate]
        unmatched = _unmatched(dataset, spec, references, candidates)
        if unmatched is not None:
            found.append(unmatched)
            continue
        pairs = [
            (r, c)
            for c in candidates
            for r in references
            if _same_setting(r, c) and r.status == c.status == "evaluated"
        ]
        if not pairs:
            status = "no evaluated runs of both in the same origin, device and profile"
            found.append(Comparison(dataset, spec, status=status))
        found += [_measure(dataset, spec, r, c) for r, c in pairs]
    return found


def _side(name: str, config: Configuration | None) -> dict[str, Any]:
    """One side of a comparison: its configuration, and its run when there is one."""
    if config is None:
        return {"configuration": name}
    return {
        "configuration": name,
        "label": config.tagged_label,
        "parent_run_id": config.parent_run_id,
        "repeats": len(config.children),
        "settings": {key: read(config) for key, (_, read) in SETTINGS.items()},
        "flags": [flag.detail for flag in model_flags(config)],
    }


def _results(comparison: Comparison) -> list[dict[str, Any]]:
    results = []
    for metric in METRICS:
        interval = comparison.intervals.get(metric)
        results.append(
            {
                "metric": f"test_{metric}",
                "statistic": "difference of the seed means (candidate − reference)",
                "difference": comparison.difference(metric),
                "ci_low": interval.low if interval else None,
                "ci_high": interval.high if interval else None,
                "confidence": interval.confidence if interval else None,
                "p_value": None,
                "method": BOOTSTRAP_METHOD.format(replicates=interval.replicates)
                if interval
                else comparison.note or comparison.status,
            }
        )
    if comparison.delong is not None:
        test = comparison.delong
        results.append(
            {
                "metric": "test_roc_auc_ensemble",
                "statistic": "difference of the seed-averaged probabilities' ROC AUC",
                "difference": test.difference,
                "ci_low": None,
                "ci_high": None,
                "confidence": None,
                "p_value": test.p_value,
                "method": DELONG_METHOD.format(pairing="paired" if test.paired else "unpaired"),
            }
        )
    return results


def comparison_records(comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """One JSON-ready dict per comparison (reports/comparisons.json's "comparisons")."""
    records = []
    for comparison in comparisons:
        spec = comparison.spec
        measured = comparison.reference is not None
        records.append(
            {
                "dataset": comparison.dataset,
                "reference": _side(spec.reference, comparison.reference),
                "candidate": _side(spec.candidate, comparison.candidate),
                "tests": spec.tests,
                "varies": list(spec.varies),
                "status": comparison.status,
                "like_for_like": comparison.like_for_like if measured else None,
                "differs": {k: list(v) for k, v in comparison.differs.items()},
                "intended_differences": {k: list(v) for k, v in comparison.intended.items()},
                "paired": comparison.paired,
                "results": _results(comparison) if measured else [],
            }
        )
    return records


def method_description() -> dict[str, Any]:
    """reports/comparisons.json's "method": how every interval and p-value was made."""
    return {
        "difference": "candidate − reference of the mean over each side's repeat trainings",
        "bootstrap": {
            "replicates": BOOTSTRAP_REPLICATES,
            "confidence": CONFIDENCE,
            "seed": BOOTSTRAP_SEED,
            "description": BOOTSTRAP_METHOD.format(replicates=BOOTSTRAP_REPLICATES),
        },
        "delong": "two classes only: DeLong's test of the ROC AUC of each side's "
        "seed-averaged probability of the positive class; paired on one test set, "
        "unpaired (variances added) on two",
        "paired": "both sides' per-image test predictions name the same images in the same order",
        "multiple_comparisons": "none: each interval and p-value stands alone",
    }
