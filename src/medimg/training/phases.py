"""The phases of one training: a single phase, or frozen feature extractor then fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass

from medimg.config.runs import RunConfig


@dataclass(frozen=True)
class Phase:
    """Epochs [first_epoch, end_epoch) (0-based) trained with one compile state.

    trainable_top_blocks: None trains every layer; an integer freezes the feature
    extractor except its top blocks (medimg.models.fine_tuning.set_trainable_top).
    """

    name: str
    first_epoch: int
    end_epoch: int
    learning_rate: float
    trainable_top_blocks: int | None


def training_phases(run: RunConfig) -> list[Phase]:
    """One phase of `run.epochs`, or two with `run.fine_tuning`:

    1. "frozen": `frozen_epochs` epochs with the feature extractor frozen (batch
       normalisation in inference mode); only the new head trains, at run.learning_rate.
    2. "fine_tune": the rest, with the top `unfreeze_top_blocks` blocks trainable at
       fine_tuning.learning_rate (batch normalisation stays frozen).
    """
    tuning = run.fine_tuning
    if tuning is None:
        return [Phase("train", 0, run.epochs, run.learning_rate, None)]
    return [
        Phase("frozen", 0, tuning.frozen_epochs, run.learning_rate, 0),
        Phase(
            "fine_tune",
            tuning.frozen_epochs,
            run.epochs,
            tuning.learning_rate,
            tuning.unfreeze_top_blocks,
        ),
    ]


def phase_index_at(phases: list[Phase], epoch: int) -> int:
    """The index of the phase that trains 0-based `epoch` (the last one past the end)."""
    for index, phase in enumerate(phases):
        if epoch < phase.end_epoch:
            return index
    return len(phases) - 1
