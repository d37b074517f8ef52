"""Evaluation figures as small PNGs: confusion matrix, ROC, PR, training curves, predictions.

Figures are built with `matplotlib.figure.Figure` and the Agg renderer, never pyplot:
no global backend or figure registry, so nothing leaks between calls or needs a display.
Each PNG is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from medimg import atomic
from medimg.inference.captions import display_name, format_prediction

DPI = 100
CONFUSION_SIZE_IN = (10.0, 4.5)
CURVE_SIZE_IN = (6.0, 5.0)
TRAINING_PANEL_SIZE_IN = (4.5, 3.5)
PREDICTION_TILE_SIZE_IN = (2.6, 3.0)
CORRECT_COLOUR = "tab:green"
WRONG_COLOUR = "tab:red"
# Keras log keys drawn by `save_training_curves`, train and "val_" variants.
TRAINING_METRICS = ("loss", "accuracy", "auc")


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    # No bbox_inches="tight": it would change the pixel size from figsize x DPI.
    fig.savefig(png, format="png", dpi=DPI)
    atomic.write_file(path, png.getvalue())
    return path


def save_confusion_matrix(
    counts: np.ndarray, class_names: list[str], path: Path, title: str = ""
) -> Path:
    """Two heatmaps side by side: counts, and row-normalised (share of each actual class).

    Args:
        counts: (K, K) int, rows = actual class, columns = predicted class.
        class_names: the K class names, label index order.
    """
    counts = np.asarray(counts)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"counts must have shape ({k}, {k}) for {class_names}, got {counts.shape}")
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    names = [display_name(c) for c in class_names]

    fig = Figure(figsize=CONFUSION_SIZE_IN, layout="constrained")
    panels = fig.subplots(1, 2)
    for ax, values, subtitle, fmt in (
        (panels[0], counts, "counts", "{:d}"),
        (panels[1], shares, "share of actual class", "{:.1%}"),
    ):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, shrink=0.8)
        threshold = values.max() / 2 if values.max() > 0 else 1
        for row in range(k):
            for col in range(k):
                value = values[row, col]
                ax.text(
                    col,
                    row,
                    fmt.format(int(value) if fmt == "{:d}" else value),
                    ha="center",
                    va="center",
                    color="white" if value > threshold else "black",
                    fontsize=9,
                )
        ax.set_xticks(range(k), names, rotation=30, ha="right")
        ax.set_yticks(range(k), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(subtitle)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _curve_label(curve: str | None, metrics: dict[str, Any], metric: str) -> str:
    """Legend entry with the curve's area, e.g. "glioma tumour (AUC 0.973)"."""
    short = "AUC" if metric == "roc_auc" else "AP"
    if curve is None:
        positive = metrics["classes"][1]
        return f"{display_name(positive)} ({short} {metrics[metric]:.3f})"
    if curve == "micro":
        return f"micro average ({short} {metrics[f'{metric}_micro']:.3f})"
    return f"{display_name(curve)} ({short} {metrics['per_class'][curve][metric]:.3f})"


AXIS_LABELS = {
    "fpr": "false positive rate (1 - specificity)",
    "tpr": "true positive rate (sensitivity)",
    "recall": "recall (sensitivity)",
    "precision": "precision (positive predictive value)",
}


def _save_curves(
    points: pd.DataFrame,
    metrics: dict[str, Any],
    path: Path,
    x: str,
    y: str,
    metric: str,
    title: str,
) -> Path:
    fig = Figure(figsize=CURVE_SIZE_IN, layout="constrained")
    ax = fig.subplots()
    groups = points.groupby("class", sort=False) if "class" in points else [(None, points)]
    for curve, frame in groups:
        # Straight segments between ROC points are what the trapezoidal AUC measures
        # (a diagonal where scores tie); average precision is the area under the
        # precision-recall steps, so that curve is drawn as steps (as scikit-learn does).
        ax.plot(
            frame[x],
            frame[y],
            drawstyle="default" if metric == "roc_auc" else "steps-post",
            linestyle="--" if curve == "micro" else "-",
            label=_curve_label(curve, metrics, metric),
        )
    if metric == "roc_auc":
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":", label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(AXIS_LABELS[x])
    ax.set_ylabel(AXIS_LABELS[y])
    ax.set_title(title)
    ax.legend(loc="lower right" if metric == "roc_auc" else "lower left", fontsize=8)
    return _save(fig, path)


def save_roc_curves(
    points: pd.DataFrame, metrics: dict[str, Any], path: Path, title: str = "ROC"
) -> Path:
    """ROC curves from `metrics.roc_points`, the legend giving each AUC from `metrics`.

    Args:
        points: columns fpr, tpr[, class].
        metrics: the `classification_metrics` dict of the same predictions.
    """
    return _save_curves(points, metrics, path, "fpr", "tpr", "roc_auc", title)


def save_pr_curves(
    points: pd.DataFrame, metrics: dict[str, Any], path: Path, title: str = "Precision-recall"
) -> Path:
    """Precision-recall curves from `metrics.pr_points`, legend with average precision."""
    return _save_curves(points, metrics, path, "recall", "precision", "pr_auc", title)


def save_training_curves(histories: dict[int, pd.DataFrame], path: Path) -> Path:
    """Loss, accuracy and AUC per epoch, train (solid) and validation (dashed), one colour per seed.

    Args:
        histories: seed -> history.csv contents (column "epoch", counted from 1, + Keras log keys).
            Panels are drawn for the TRAINING_METRICS present in the histories.
    """
    if not histories:
        raise ValueError("save_training_curves needs at least one history")
    for seed, history in histories.items():
        if "epoch" not in history:
            raise ValueError(f"history of seed {seed} has no 'epoch' column: {list(history)}")
    shown = [m for m in TRAINING_METRICS if any(m in h for h in histories.values())]
    if not shown:
        raise ValueError(
            f"the histories have none of the columns {list(TRAINING_METRICS)}: "
            f"{sorted({c for h in histories.values() for c in h})}"
        )
    width, height = TRAINING_PANEL_SIZE_IN
    fig = Figure(figsize=(width * len(shown), height), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(shown)))
    colours = [f"C{i % 10}" for i in range(len(histories))]
    for ax, metric in zip(axes, shown, strict=True):
        for colour, (seed, history) in zip(colours, sorted(histories.items()), strict=True):
            epochs = history["epoch"]
            # Small markers: a one-epoch training is a point, which a bare line would hide.
            style = {"color": colour, "marker": "o", "markersize": 3}
            if metric in history:
                ax.plot(epochs, history[metric], label=f"seed {seed} train", **style)
            if f"val_{metric}" in history:
                ax.plot(
                    epochs,
                    history[f"val_{metric}"],
                    linestyle="--",
                    label=f"seed {seed} val",
                    **style,
                )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(metric)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def save_prediction_grid(
    images: np.ndarray,
    y_true: np.ndarray,
    proba: np.ndarray,
    class_names: list[str],
    path: Path,
    columns: int = 4,
) -> Path:
    """Images captioned like the thesis ("99.13 % probability: ...\\nactual: ..."), green if right.

    Args:
        images: (N, H, W, C) uint8, C = 1 or 3.
        y_true: (N,) int label indices.
        proba: (N, K) class probabilities.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 of shape (N, H, W, C) with C in (1, 3), "
            f"got {images.dtype} {images.shape}"
        )
    if len(images) == 0 or len(y_true) != len(images) or len(proba) != len(images):
        raise ValueError(
            f"need at least one image and one label and probability row per image; got "
            f"{len(images)} images, {len(y_true)} labels, {len(proba)} probability rows"
        )
    rows = -(-len(images) // columns)
    cols = min(columns, len(images))
    width, height = PREDICTION_TILE_SIZE_IN
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, actual, row in zip(axes, images, y_true, proba, strict=False):
        predicted = int(np.argmax(row))
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image)
        caption = format_prediction(
            [(class_names[predicted], float(row[predicted]))], actual=class_names[int(actual)]
        )
        colour = CORRECT_COLOUR if predicted == int(actual) else WRONG_COLOUR
        ax.set_title(caption, color=colour, fontsize=8)
    return _save(fig, path)
