"""Statistics of one metric over the repeat trainings: the one aggregator of medimg.

Mean, sample standard deviation, minimum, maximum and a Student-t confidence
interval, used alike by the evaluate stage (details.json, the parent run), the train
stage, the GPU results' import and the report. The repeats of a configuration
(seeds 0..n-1) are a small sample of the trainings it could give, so the interval
uses Student's t with n - 1 degrees of freedom: mean ± t(0.975, n - 1) · s / √n for
95 %, s the sample standard deviation. With one repeat no spread can be measured:
std and the interval are None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
# Sample std (ddof=1): the seeds are a sample of possible trainings, and the
# spread of that population is what "mean ± std over 5 trainings" reports.
STD_DDOF = 1


@dataclass(frozen=True)
class Summary:
    """Statistics of one metric over n repeats; std and the interval need n >= 2."""

    n: int
    mean: float
    std: float | None
    min: float
    max: float
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
    """Mean, sample std (ddof=1), min, max and the t confidence interval of `values` (one
    per repeat); ValueError for an empty sequence or a value that is not finite."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"summarize needs a non-empty 1-D sequence, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"summarize needs finite values, got {array.tolist()}")
    n, mean = len(array), float(array.mean())
    low, high = float(array.min()), float(array.max())
    if n <= STD_DDOF:
        return Summary(n=n, mean=mean, std=None, min=low, max=high, ci_low=None, ci_high=None)
    std = float(array.std(ddof=STD_DDOF))
    half_width = t_critical(n, confidence) * std / math.sqrt(n)
    return Summary(
        n=n,
        mean=mean,
        std=std,
        min=low,
        max=high,
        ci_low=mean - half_width,
        ci_high=mean + half_width,
    )
