"""Mean, standard deviation and a Student-t confidence interval over repeat trainings.

The repeats of a configuration (seeds 0..n-1) are a small sample of the trainings
it could give, so the interval uses Student's t with n - 1 degrees of freedom:
mean ± t(0.975, n - 1) · s / √n for 95 %, s the sample standard deviation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from medimg.evaluation.metrics import STD_DDOF

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """Statistics of one metric over n repeats; std and the interval need n >= 2."""

    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def ci_half_width(self) -> float | None:
        return None if self.ci_high is None else self.ci_high - self.mean


def t_critical(n: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student-t quantile for n values (n - 1 degrees of freedom), e.g. 4.303 for 3."""
    if n < 2:
        raise ValueError(f"a t interval needs at least 2 values, got {n}")
    return float(stats.t.ppf((1 + confidence) / 2, df=n - 1))


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, sample std (ddof=1) and the t confidence interval of `values` (one per repeat)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"summarize needs a non-empty 1-D sequence, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"summarize needs finite values, got {array.tolist()}")
    n, mean = len(array), float(array.mean())
    if n <= STD_DDOF:
        return Summary(n=n, mean=mean, std=None, ci_low=None, ci_high=None)
    std = float(array.std(ddof=STD_DDOF))
    half_width = t_critical(n, confidence) * std / math.sqrt(n)
    return Summary(n=n, mean=mean, std=std, ci_low=mean - half_width, ci_high=mean + half_width)
