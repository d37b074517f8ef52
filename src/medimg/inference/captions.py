"""Thesis-style captions of a prediction ("99.13 % probability: pituitary tumour")."""

from __future__ import annotations

from medimg.inference.errors import PredictError


def display_name(label: str) -> str:
    """Human-readable class name, British spelling as in the thesis.

    "NORMAL" -> "normal", "PNEUMONIA" -> "pneumonia", "glioma_tumor" -> "glioma tumour",
    "no_tumor" -> "no tumour".
    """
    words = label.replace("_", " ").lower().split()
    return " ".join("tumour" if word == "tumor" else word for word in words)


def format_prediction(ranked: list[tuple[str, float]], actual: str | None = None) -> str:
    """Thesis-style caption of the top prediction, e.g.
    "99.13 % probability: pituitary tumour\\nactual: pituitary tumour".

    Args:
        ranked: [(class name, probability), ...] most probable first (as `predict_image`
            returns); only the first entry is shown.
        actual: the true class when known; adds the second line.
    """
    if not ranked:
        raise PredictError("format_prediction needs at least one (class, probability) pair")
    label, probability = ranked[0]
    if not 0.0 <= probability <= 1.0:
        raise PredictError(f"probability of {label!r} must be in [0, 1], got {probability}")
    caption = f"{probability * 100:.2f} % probability: {display_name(label)}"
    if actual is not None:
        caption += f"\nactual: {display_name(actual)}"
    return caption
