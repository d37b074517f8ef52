"""The thesis's published results and which of our configurations sit beside them.

The figures live in thesis_results.yaml, shipped with the package, and nowhere
else: every comparison in the report reads them from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medimg.config.base import error_lines
from medimg.reporting import ReportError

THESIS_RESULTS_FILE = Path(__file__).with_name("thesis_results.yaml")

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# The training settings a comparison checks on both sides (see reporting.comparisons).
Setting = Literal["epochs", "image_size", "test_images", "split_protocol", "profile", "device"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ThesisRow(_Strict):
    """One published result, and the names of our configurations compared with it."""

    label: str
    train_accuracy: Fraction | None = None
    val_accuracy: Fraction | None = None
    test_accuracy: Fraction
    ours: list[str] = Field(default_factory=list)


class ThesisTable(_Strict):
    title: str
    statistic: str = Field(description="what each figure is, e.g. 'mean of 5 trainings'")
    split: str = Field(description="how the thesis split this dataset")
    rows: list[ThesisRow] = Field(min_length=1)


class ComparisonSpec(_Strict):
    """Two of our configurations compared with intervals: Δ = candidate − reference."""

    reference: str
    candidate: str
    tests: str = Field(description="what the pair tests, e.g. a claim of the thesis")
    varies: list[Setting] = Field(
        default_factory=list,
        description="settings meant to differ (e.g. split_protocol and with it test_images); "
        "any other difference makes the comparison not like-for-like",
    )

    @model_validator(mode="after")
    def _two_configurations(self) -> ComparisonSpec:
        if self.reference == self.candidate:
            raise ValueError(f"compares {self.reference!r} with itself")
        return self


class ThesisResults(_Strict):
    source: str
    protocol: str
    datasets: dict[str, ThesisTable]
    protocol_comparisons: dict[str, list[str]] = Field(
        default_factory=dict,
        description="dataset -> configurations that differ only in split protocol; "
        "the first uses the thesis's protocol",
    )
    comparisons: dict[str, list[ComparisonSpec]] = Field(
        default_factory=dict,
        description="dataset -> pairs of configurations compared with intervals",
    )

    def compared_runs(self, dataset: str) -> list[str]:
        """Our configurations named for `dataset`, thesis rows first, each name once."""
        names: list[str] = []
        table = self.datasets.get(dataset)
        for row in table.rows if table else []:
            names += [name for name in row.ours if name not in names]
        names += [n for n in self.protocol_comparisons.get(dataset, []) if n not in names]
        for spec in self.comparisons.get(dataset, []):
            names += [n for n in (spec.reference, spec.candidate) if n not in names]
        return names


def load_thesis_results(path: Path = THESIS_RESULTS_FILE) -> ThesisResults:
    """Read and validate the thesis file; a bad file is a ReportError naming the key."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ReportError(f"{path}: cannot read the thesis results: {err}") from None
    try:
        return ThesisResults.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(error_lines(err, ""))
        raise ReportError(f"{path}: invalid thesis results: {problems}") from None
