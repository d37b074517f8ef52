"""Warnings about a configuration's models that its averages would hide.

A model that calls every test image one class can still score the share of that
class (e.g. 62.5 % on the X-ray test set), and its ROC AUC can sit at 0.5: such a
row is not a weak model but a training that never learned. Two signs, per repeat:

- single class: every test image predicted as one class. From the per-image test
  predictions; for a run that lacks them, from its per-class recalls (one class at
  100 %, every other at 0 %: the same fact, measured by the evaluate stage).
- validation AUC stuck at 0.5: the validation AUC of every epoch at most
  0.5 + AUC_STUCK_TOLERANCE, i.e. the scores never ranked a class above another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medimg.inference.captions import display_name
from medimg.reporting.collect import Configuration

# How far above chance a validation AUC may sit and still count as "never left 0.5":
# a constant output gives exactly 0.5; Keras's AUC, from 200 thresholds, can add a hair.
AUC_STUCK_TOLERANCE = 0.01
SINGLE_CLASS = "single class"
VAL_AUC_STUCK = "val AUC stuck at 0.5"


@dataclass(frozen=True)
class Flag:
    """One warning: a short tag for the tables and the sentence that explains it."""

    tag: str
    detail: str


def _predicted_class(config: Configuration, child: int) -> str | None:
    """The one class repeat `child` predicted for every test image, or None."""
    classes = config.classes
    if config.test_predictions is not None:
        predicted = np.unique(config.test_predictions[child].predicted)
        return classes[int(predicted[0])] if len(predicted) == 1 else None
    metrics = config.children[child]
    if len(classes) == 2:  # recall of the positive class and of the negative (specificity)
        recalls = [metrics.get("test_specificity"), metrics.get("test_recall")]
    else:
        recalls = [metrics.get(f"test_recall_{name}") for name in classes]
    if any(value is None for value in recalls):
        return None
    full = [k for k, value in enumerate(recalls) if value == 1.0]
    others_zero = all(value == 0.0 for k, value in enumerate(recalls) if k not in full)
    return classes[full[0]] if len(full) == 1 and others_zero else None


def _seed_names(config: Configuration, children: list[int]) -> str:
    seeds = [str(config.seeds[k]) if config.seeds else str(k) for k in children]
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(seeds)


def model_flags(config: Configuration) -> list[Flag]:
    """The warnings of an evaluated configuration (none for one without evaluation)."""
    if config.status != "evaluated":
        return []
    flags = []
    single = {k: _predicted_class(config, k) for k in range(len(config.children))}
    single = {k: name for k, name in single.items() if name is not None}
    if single:
        source = "" if config.test_predictions is not None else " (from its per-class recalls)"
        calls = "; ".join(
            f"{_seed_names(config, [k])} calls every test image {display_name(name)}"
            for k, name in single.items()
        )
        flags.append(Flag(SINGLE_CLASS, f"{config.label}: {calls}{source}."))
    stuck = [
        k
        for k, history in enumerate(config.val_auc_histories)
        if history and max(history) <= 0.5 + AUC_STUCK_TOLERANCE
    ]
    if stuck:
        highest = max(max(config.val_auc_histories[k]) for k in stuck)
        flags.append(
            Flag(
                VAL_AUC_STUCK,
                f"{config.label}: the validation AUC of {_seed_names(config, stuck)} never "
                f"rose above {0.5 + AUC_STUCK_TOLERANCE:.2f} in any epoch (highest "
                f"{highest:.3f}): the model never ranked one class above another.",
            )
        )
    return flags
