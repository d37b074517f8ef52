"""How sure a difference between two configurations is: a two-level bootstrap and DeLong's test.

Δ = candidate − reference, each side's figure being the mean over its repeat
trainings (seeds) of a test metric: accuracy, or ROC AUC (binary: of the positive
class; multiclass: the macro mean of the one-vs-rest AUCs, as the logged metrics).

Two sources of chance move Δ: which trainings the seeds gave (the repeats), and
which images the test set happens to hold (a finite sample of the population). A
Student-t interval over the seeds sees only the first; with 60 test images the
second is often the larger (one image is 1.7 points of accuracy). So the interval
comes from a two-level bootstrap, each replicate drawing:

- the test images, with replacement within each class (stratified: every class keeps
  its count, so a per-class AUC is always defined, as pROC's default for AUC). When
  both sides were tested on the same images (paired), both get the SAME draw: an
  image that is hard for one model is usually hard for the other, and resampling the
  pairs together keeps that correlation, which narrows the interval where it should.
  On different test sets (unpaired) each side draws from its own images;
- each side's seeds, with replacement and independently of the other side (seed k
  of one configuration shares nothing with seed k of another).

The 95 % interval is the percentile interval of the replicates' Δ; the point
estimate is Δ on the full test set(s) with every seed. A side with one seed adds no
training variance: the interval then covers the test-set sampling only. scipy's
`stats.bootstrap` resamples one level without strata, and calling scikit-learn's
`roc_auc_score` for every replicate, seed and class is tens of thousands of calls
per comparison, so the resampling is written here with numpy: a replicate's AUC is
the Mann-Whitney statistic with the resample counts as weights, one matrix product
for all replicates (tests check it against `roc_auc_score` with `sample_weight`).

DeLong's test (DeLong, DeLong & Clarke-Pearson 1988) compares the ROC AUC of two
binary scores: paired on one test set (the covariance of the two AUCs enters), or
unpaired (independent test sets: the variances add). It takes one score per image
and side: here the seed-averaged probability of the positive class (the ensemble),
so its p-value is about the ensemble's AUC, not the seed mean's. Neither scipy nor
scikit-learn has it; it is written from the structural components below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from medimg.evaluation.statistics import CONFIDENCE

BOOTSTRAP_REPLICATES = 2000
# Fixed, so that the same runs give the same report; every comparison starts from it.
BOOTSTRAP_SEED = 0
METRICS = ("accuracy", "roc_auc")


@dataclass(frozen=True)
class SeedPredictions:
    """One configuration on its test set, every seed on the same images in the same order.

    labels: (N,) int class indices. predicted: (S, N) int, the class each seed's metrics
    counted (its decision rule applied). proba: (S, N, K) class probabilities.
    """

    labels: np.ndarray
    predicted: np.ndarray
    proba: np.ndarray

    def __post_init__(self) -> None:
        seeds, images, classes = np.shape(self.proba)
        if np.shape(self.labels) != (images,) or np.shape(self.predicted) != (seeds, images):
            raise ValueError(
                f"labels {np.shape(self.labels)}, predicted {np.shape(self.predicted)} and "
                f"proba {np.shape(self.proba)} must be (N,), (S, N) and (S, N, K)"
            )
        if seeds < 1 or images < 1 or classes < 2:
            raise ValueError(f"need a seed, an image and two classes; proba is {self.proba.shape}")

    @property
    def n_seeds(self) -> int:
        return self.proba.shape[0]

    @property
    def n_images(self) -> int:
        return self.proba.shape[1]

    def auc_classes(self) -> list[int]:
        """The classes whose ROC AUC is defined and counted: binary, the positive class;
        multiclass, every class present and not alone (as the logged macro AUC)."""
        counts = np.bincount(self.labels, minlength=self.proba.shape[2])
        defined = [k for k, n in enumerate(counts) if 0 < n < self.n_images]
        if self.proba.shape[2] == 2:
            return [1] if 1 in defined else []
        return defined


@dataclass(frozen=True)
class Interval:
    """Δ (candidate − reference) of one metric and its bootstrap percentile interval."""

    metric: str
    difference: float
    low: float
    high: float
    confidence: float
    replicates: int
    paired: bool


@dataclass(frozen=True)
class DeLongTest:
    """DeLong's test of AUC(candidate) − AUC(reference); z and p are None when the
    variance is zero (e.g. both separate the classes perfectly) or a class has one image."""

    auc_reference: float
    auc_candidate: float
    difference: float
    z: float | None
    p_value: float | None
    paired: bool


def pairwise_order(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """(n, m) ψ: 1 where positive j scores above negative i, 0.5 for a tie, 0 below.

    positive: (m,) scores of the positive images; negative: (n,) of the others.
    Its mean is the ROC AUC (Mann-Whitney). O(m·n) memory: the test sets here hold
    at most a few thousand images.
    """
    above = positive[None, :] > negative[:, None]
    tied = positive[None, :] == negative[:, None]
    return above + 0.5 * tied


def weighted_auc(
    psi: np.ndarray, positive_weights: np.ndarray, negative_weights: np.ndarray
) -> np.ndarray:
    """(B,) ROC AUC of B weighted copies of one scoring: ψ (n, m), weights (B, m) and (B, n).

    A weight is how often an image was drawn, so this is the AUC of the resampled set.
    """
    pairs = np.einsum("bn,nm,bm->b", negative_weights, psi, positive_weights, optimize=True)
    return pairs / (positive_weights.sum(axis=1) * negative_weights.sum(axis=1))


def accuracy_per_seed(side: SeedPredictions, weights: np.ndarray) -> np.ndarray:
    """(B, S) accuracy of each seed under each of B image weightings (B, N)."""
    correct = (side.predicted == side.labels[None, :]).astype(np.float64)  # (S, N)
    return weights @ correct.T / weights.sum(axis=1, keepdims=True)


def auc_per_seed(side: SeedPredictions, weights: np.ndarray) -> np.ndarray:
    """(B, S) ROC AUC of each seed (macro one-vs-rest for K > 2) under each weighting (B, N)."""
    classes = side.auc_classes()
    if not classes:
        raise ValueError("ROC AUC is undefined: the test set holds a single class")
    per_class = np.empty((len(classes), weights.shape[0], side.n_seeds))
    for c, k in enumerate(classes):
        is_k = side.labels == k
        for s in range(side.n_seeds):
            psi = pairwise_order(side.proba[s, is_k, k], side.proba[s, ~is_k, k])
            per_class[c, :, s] = weighted_auc(psi, weights[:, is_k], weights[:, ~is_k])
    return per_class.mean(axis=0)


def stratified_weights(labels: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(B, N) draw counts: per class, as many images drawn with replacement as it holds."""
    weights = np.zeros((replicates, len(labels)))
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        uniform = np.full(len(members), 1 / len(members))
        weights[:, members] = rng.multinomial(len(members), uniform, size=replicates)
    return weights


def _seed_means(per_seed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B,) mean of S seeds drawn with replacement per replicate, from (B, S) values."""
    replicates, seeds = per_seed.shape
    drawn = rng.integers(0, seeds, size=(replicates, seeds))
    return np.take_along_axis(per_seed, drawn, axis=1).mean(axis=1)


def bootstrap_differences(
    reference: SeedPredictions,
    candidate: SeedPredictions,
    paired: bool,
    replicates: int = BOOTSTRAP_REPLICATES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Interval]:
    """Δ of the seed-mean accuracy and ROC AUC with their two-level bootstrap intervals.

    paired: both sides were tested on the same images in the same order (their labels
    must then be equal); both then get the same image draws. "roc_auc" is left out when
    a side's test set holds a single class.
    """
    if paired and not np.array_equal(reference.labels, candidate.labels):
        raise ValueError("paired sides must have the same test labels in the same order")
    if replicates < 1 or not 0 < confidence < 1:
        raise ValueError(
            f"need replicates >= 1 and 0 < confidence < 1, got {replicates}, {confidence}"
        )
    rng = np.random.default_rng(seed)
    weights = {"reference": stratified_weights(reference.labels, replicates, rng)}
    weights["candidate"] = (
        weights["reference"] if paired else stratified_weights(candidate.labels, replicates, rng)
    )
    sides = {"reference": reference, "candidate": candidate}
    functions = {"accuracy": accuracy_per_seed, "roc_auc": auc_per_seed}
    if not (reference.auc_classes() and candidate.auc_classes()):
        functions.pop("roc_auc")
    tail = (1 - confidence) / 2
    intervals = {}
    for metric, per_seed in functions.items():
        estimate = {
            name: float(per_seed(side, np.ones((1, side.n_images))).mean())
            for name, side in sides.items()
        }
        drawn = {
            name: _seed_means(per_seed(side, weights[name]), rng) for name, side in sides.items()
        }
        deltas = drawn["candidate"] - drawn["reference"]
        low, high = np.quantile(deltas, [tail, 1 - tail])
        intervals[metric] = Interval(
            metric=metric,
            difference=estimate["candidate"] - estimate["reference"],
            low=float(low),
            high=float(high),
            confidence=confidence,
            replicates=replicates,
            paired=paired,
        )
    return intervals


def _structural_components(
    labels: np.ndarray, score: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """(AUC, V10 (m,), V01 (n,)): DeLong's components of a binary scoring (labels 0/1)."""
    positive = np.asarray(labels) == 1
    psi = pairwise_order(np.asarray(score)[positive], np.asarray(score)[~positive])
    return float(psi.mean()), psi.mean(axis=0), psi.mean(axis=1)


def delong_test(
    reference_labels: np.ndarray,
    reference_score: np.ndarray,
    candidate_labels: np.ndarray,
    candidate_score: np.ndarray,
    paired: bool,
) -> DeLongTest:
    """Two-sided DeLong test of AUC(candidate) − AUC(reference) for binary labels (N,) 0/1
    and scores (N,) of the positive class; paired: the same images in the same order."""
    if paired and not np.array_equal(reference_labels, candidate_labels):
        raise ValueError("a paired DeLong test needs the same labels in the same order")
    for labels in (reference_labels, candidate_labels):
        if set(np.unique(labels)) != {0, 1}:
            raise ValueError(
                f"DeLong's test needs binary labels with both classes, got {set(labels)}"
            )
    auc_r, v10_r, v01_r = _structural_components(reference_labels, reference_score)
    auc_c, v10_c, v01_c = _structural_components(candidate_labels, candidate_score)
    difference = auc_c - auc_r
    if min(len(v10_r), len(v01_r), len(v10_c), len(v01_c)) < 2:
        return DeLongTest(auc_r, auc_c, difference, None, None, paired)
    if paired:
        # Var(AUC_c − AUC_r) = (S10_cc + S10_rr − 2 S10_cr) / m + (S01 alike) / n
        s10 = np.cov(np.vstack([v10_r, v10_c]))
        s01 = np.cov(np.vstack([v01_r, v01_c]))
        variance = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / len(v10_r) + (
            s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]
        ) / len(v01_r)
    else:
        variance = sum(np.var(v, ddof=1) / len(v) for v in (v10_r, v01_r, v10_c, v01_c))
    if not variance > 0:
        return DeLongTest(auc_r, auc_c, difference, None, None, paired)
    z = difference / math.sqrt(variance)
    return DeLongTest(auc_r, auc_c, difference, float(z), float(2 * stats.norm.sf(abs(z))), paired)
