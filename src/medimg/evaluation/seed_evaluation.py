"""One trained model on the val and test splits: the decision rule, metrics, the ensemble.

Shared by the evaluate stage and the GPU runner, so a seed is judged the same way
wherever it trained. The decision rule is chosen on validation data only: the test
split never sets the threshold it is measured with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medimg.evaluation.metrics import classification_metrics, predicted_classes, youden_threshold
from medimg.evaluation.predictions import EVALUATED_SPLITS, SplitPredictions
from medimg.evaluation.test_predictions import write_test_predictions

DecisionRule = Literal["argmax", "youden_val"]


def decision_threshold(rule: DecisionRule, val: SplitPredictions) -> float | None:
    """None for the argmax; for "youden_val" Youden's threshold on the validation split."""
    if rule == "argmax":
        return None
    return youden_threshold(val.y["val"], val.proba["val"][:, 1])


def evaluate_predictions(
    predictions: SplitPredictions, classes: list[str], rule: DecisionRule
) -> dict[str, dict[str, Any]]:
    """{split: classification_metrics} with the threshold `rule` picks on validation."""
    threshold = decision_threshold(rule, predictions)
    return {
        split: classification_metrics(
            predictions.y[split], predictions.proba[split], classes, threshold
        )
        for split in EVALUATED_SPLITS
    }


def save_test_predictions(
    path: Path,
    predictions: SplitPredictions,
    classes: list[str],
    rule: DecisionRule,
    image_paths: Sequence[str],
) -> None:
    """The seed's per-image test file (evaluation.test_predictions), its predicted classes
    those its metrics counted: `rule`, with the threshold chosen on validation."""
    predicted = predicted_classes(predictions.proba["test"], decision_threshold(rule, predictions))
    write_test_predictions(
        path, image_paths, predictions.y["test"], predicted, predictions.proba["test"], classes
    )


def ensemble(members: list[SplitPredictions]) -> SplitPredictions:
    """The mean class probabilities of several models (the repeat trainings) per split."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    return SplitPredictions(
        y=members[0].y,
        proba={
            split: np.mean([m.proba[split] for m in members], axis=0) for split in EVALUATED_SPLITS
        },
    )
